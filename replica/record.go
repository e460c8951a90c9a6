package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Journal record types.
const (
	recWrite   byte = 1 // data extent: length bytes of payload follow
	recZero    byte = 2 // zero extent, no payload
	recBarrier byte = 3 // consistency point; flag holds the Consistency
	recResize  byte = 4 // new disk size in off
	// recChunks: whole, aligned chunks stored directly as chunk objects;
	// the payload is one 32-byte chunk hash per chunk (the zero hash for
	// an all-zero chunk), length/(payload/32) is the chunk size.
	recChunks byte = 5
)

// recHeaderSize is the size of a journal record header:
//
//	0  crc32c (uint32 LE) of bytes 4..end of record (header rest + payload)
//	4  total record size (uint32 LE), header included
//	8  type (1)
//	9  flag (1)
//	10 reserved (2), zero
//	12 sequence number (uint64 LE)
//	20 time, Unix nanoseconds (int64 LE)
//	28 offset (uint64 LE); new size for resize records
//	36 length (uint64 LE)
//	44 payload (length bytes, write records only)
const recHeaderSize = 44

// maxExtent bounds the payload of one write record.
const maxExtent = 16 << 20

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// record is a decoded journal record without its payload.
type record struct {
	typ    byte
	flag   byte
	seq    uint64
	time   int64
	off    int64
	length int64
}

// chunkHashes returns the hashes of a recChunks payload.
func chunkHashes(payload []byte) []Hash {
	hs := make([]Hash, len(payload)/32)
	for i := range hs {
		copy(hs[i][:], payload[32*i:])
	}
	return hs
}

// sealRecord computes the CRC of the encoded record at the start of rec.
func sealRecord(rec []byte) {
	binary.LittleEndian.PutUint32(rec, crc32.Update(0, crcTable, rec[4:]))
}

// appendRecord appends the encoding of r with payload to dst.
func appendRecord(dst []byte, r record, payload []byte) []byte {
	start := len(dst)
	total := recHeaderSize + len(payload)
	var h [recHeaderSize]byte
	binary.LittleEndian.PutUint32(h[4:], uint32(total))
	h[8] = r.typ
	h[9] = r.flag
	binary.LittleEndian.PutUint64(h[12:], r.seq)
	binary.LittleEndian.PutUint64(h[20:], uint64(r.time))
	binary.LittleEndian.PutUint64(h[28:], uint64(r.off))
	binary.LittleEndian.PutUint64(h[36:], uint64(r.length))
	dst = append(dst, h[:]...)
	dst = append(dst, payload...)
	crc := crc32.Update(0, crcTable, dst[start+4:])
	binary.LittleEndian.PutUint32(dst[start:], crc)
	return dst
}

var errShortRecord = errors.New("truncated record")

// decodeRecordHeader validates the fixed part of a record header and
// returns the record and its total size. It does not check the CRC.
func decodeRecordHeader(h []byte) (record, int, error) {
	if len(h) < recHeaderSize {
		return record{}, 0, errShortRecord
	}
	total := int(binary.LittleEndian.Uint32(h[4:]))
	r := record{
		typ:    h[8],
		flag:   h[9],
		seq:    binary.LittleEndian.Uint64(h[12:]),
		time:   int64(binary.LittleEndian.Uint64(h[20:])),
		off:    int64(binary.LittleEndian.Uint64(h[28:])),
		length: int64(binary.LittleEndian.Uint64(h[36:])),
	}
	if h[10] != 0 || h[11] != 0 {
		return record{}, 0, errors.New("reserved bytes not zero")
	}
	if r.seq == 0 {
		return record{}, 0, errors.New("sequence number 0")
	}
	if r.off < 0 || r.length < 0 || r.off > maxDiskSize || r.length > maxDiskSize {
		return record{}, 0, fmt.Errorf("offset %d or length %d out of range", r.off, r.length)
	}
	want := recHeaderSize
	switch r.typ {
	case recWrite:
		if r.length == 0 || r.length > maxExtent {
			return record{}, 0, fmt.Errorf("write length %d out of range", r.length)
		}
		want += int(r.length)
	case recZero:
		if r.length == 0 {
			return record{}, 0, errors.New("zero extent of length 0")
		}
	case recBarrier:
		if Consistency(r.flag) != CrashConsistent && Consistency(r.flag) != AppConsistent {
			return record{}, 0, fmt.Errorf("barrier of unknown consistency %d", r.flag)
		}
	case recResize:
	case recChunks:
		p := total - recHeaderSize
		if p <= 0 || p%32 != 0 || r.length == 0 || r.length%int64(p/32) != 0 || !validChunkSize(int(r.length/int64(p/32))) {
			return record{}, 0, fmt.Errorf("chunk record of %d bytes for length %d", total, r.length)
		}
		want = total
	default:
		return record{}, 0, fmt.Errorf("unknown record type %d", r.typ)
	}
	if r.typ != recBarrier && r.flag != 0 {
		return record{}, 0, errors.New("flag set on a record that has none")
	}
	if total != want {
		return record{}, 0, fmt.Errorf("record size %d, want %d", total, want)
	}
	return r, total, nil
}

// decodeRecord decodes one complete record from the start of b and checks
// its CRC. It returns the record, its payload (aliasing b) and its size.
func decodeRecord(b []byte) (record, []byte, int, error) {
	r, total, err := decodeRecordHeader(b)
	if err != nil {
		return record{}, nil, 0, err
	}
	if len(b) < total {
		return record{}, nil, 0, errShortRecord
	}
	if crc32.Update(0, crcTable, b[4:total]) != binary.LittleEndian.Uint32(b) {
		return record{}, nil, 0, errors.New("checksum mismatch")
	}
	return r, b[recHeaderSize:total], total, nil
}
