package fs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/ferrymigrate/ferry/replica/backend"
)

// Pack file format (docs/storage.md, "Pack files"):
//
//	header  "FERRYPK1"
//	objects the objects' bytes, back to back
//	index   per object: u16 name length, name, u64 offset, u32 size,
//	        u32 CRC-32C of the object, u64 version
//	footer  u64 index length, u32 object count, u32 CRC-32C of the index,
//	        "FERRYPKI"
//
// Integers are little-endian. The index is at the end so a pack is written
// in one pass; a pack is renamed into place only after it is fsynced, so a
// pack with a bad footer or index is damage, not a torn write.
const (
	packMagic       = "FERRYPK1"
	packFooterMagic = "FERRYPKI"
	packHeaderSize  = len(packMagic)
	packFooterSize  = 8 + 4 + 4 + len(packFooterMagic)
	// packEntryFixed is an index entry's size without its name.
	packEntryFixed = 2 + 8 + 4 + 4 + 8
	// maxPackObject bounds one packed object: the index holds a u32 size.
	maxPackObject = 1<<32 - 1
)

// castagnoli is CRC-32C, computed in hardware on amd64 and arm64: it
// catches a flipped bit in a packed object before the store's AEAD has
// to, and names the pack it is in.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// packEntry locates one object inside a pack.
type packEntry struct {
	name string
	off  int64
	size uint32
	crc  uint32
	ver  uint64 // store-wide: the highest version of a name is its object
}

// appendIndex appends entries' index and the footer to buf.
func appendIndex(buf []byte, entries []packEntry) []byte {
	start := len(buf)
	for _, e := range entries {
		buf = binary.LittleEndian.AppendUint16(buf, uint16(len(e.name)))
		buf = append(buf, e.name...)
		buf = binary.LittleEndian.AppendUint64(buf, uint64(e.off))
		buf = binary.LittleEndian.AppendUint32(buf, e.size)
		buf = binary.LittleEndian.AppendUint32(buf, e.crc)
		buf = binary.LittleEndian.AppendUint64(buf, e.ver)
	}
	idx := buf[start:]
	sum := crc32.Checksum(idx, castagnoli)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(len(idx)))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(entries)))
	buf = binary.LittleEndian.AppendUint32(buf, sum)
	return append(buf, packFooterMagic...)
}

// readPackIndex reads and checks the index of a pack of size bytes.
func readPackIndex(r io.ReaderAt, size int64) ([]packEntry, error) {
	if size < int64(packHeaderSize+packFooterSize) {
		return nil, fmt.Errorf("%d bytes is too short for a pack", size)
	}
	var head [packHeaderSize]byte
	if _, err := r.ReadAt(head[:], 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	if string(head[:]) != packMagic {
		return nil, errors.New("not a pack (bad header)")
	}
	var foot [packFooterSize]byte
	if _, err := r.ReadAt(foot[:], size-int64(packFooterSize)); err != nil {
		return nil, fmt.Errorf("read footer: %w", err)
	}
	if string(foot[16:]) != packFooterMagic {
		return nil, errors.New("bad footer")
	}
	idxLen := binary.LittleEndian.Uint64(foot[0:])
	count := binary.LittleEndian.Uint32(foot[8:])
	sum := binary.LittleEndian.Uint32(foot[12:])
	dataEnd := size - int64(packFooterSize)
	if idxLen > uint64(dataEnd-int64(packHeaderSize)) {
		return nil, fmt.Errorf("index length %d does not fit a %d-byte pack", idxLen, size)
	}
	dataEnd -= int64(idxLen)
	idx := make([]byte, idxLen)
	if _, err := r.ReadAt(idx, dataEnd); err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	if crc32.Checksum(idx, castagnoli) != sum {
		return nil, errors.New("index checksum mismatch")
	}
	return parseIndex(idx, count, dataEnd)
}

// parseIndex decodes count index entries from idx, each of whose objects
// must lie between the header and dataEnd. It never trusts a length it
// has not checked against what is left.
func parseIndex(idx []byte, count uint32, dataEnd int64) ([]packEntry, error) {
	if uint64(count) > uint64(len(idx))/packEntryFixed {
		return nil, fmt.Errorf("index of %d bytes cannot hold %d objects", len(idx), count)
	}
	entries := make([]packEntry, 0, count)
	for i := uint32(0); i < count; i++ {
		if len(idx) < 2 {
			return nil, fmt.Errorf("index entry %d: truncated", i)
		}
		n := int(binary.LittleEndian.Uint16(idx))
		if len(idx) < packEntryFixed+n {
			return nil, fmt.Errorf("index entry %d: truncated", i)
		}
		name := string(idx[2 : 2+n])
		rest := idx[2+n:]
		e := packEntry{
			name: name,
			off:  int64(binary.LittleEndian.Uint64(rest)),
			size: binary.LittleEndian.Uint32(rest[8:]),
			crc:  binary.LittleEndian.Uint32(rest[12:]),
			ver:  binary.LittleEndian.Uint64(rest[16:]),
		}
		idx = rest[24:]
		if !backend.ValidName(name) {
			return nil, fmt.Errorf("index entry %d: invalid object name %q", i, name)
		}
		if e.off < int64(packHeaderSize) || e.off > dataEnd || int64(e.size) > dataEnd-e.off {
			return nil, fmt.Errorf("index entry %d (%s): object at %d+%d lies outside the pack's data", i, name, e.off, e.size)
		}
		entries = append(entries, e)
	}
	if len(idx) != 0 {
		return nil, fmt.Errorf("%d bytes after the last index entry", len(idx))
	}
	return entries, nil
}

// Delete log format: one record per deleted packed object, appended:
// u16 name length, name, u64 version, u32 CRC-32C of the preceding bytes
// of the record. A record deletes every copy of the name whose version is
// at most its version.
const tombFixed = 2 + 8 + 4

// appendTomb appends one delete record to buf.
func appendTomb(buf []byte, name string, ver uint64) []byte {
	start := len(buf)
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(name)))
	buf = append(buf, name...)
	buf = binary.LittleEndian.AppendUint64(buf, ver)
	return binary.LittleEndian.AppendUint32(buf, crc32.Checksum(buf[start:], castagnoli))
}

// parseTombs decodes the delete log, calling fn for each sound record. It
// stops at the first record that is cut short or fails its checksum (a
// crash in the middle of an append) and returns how many bytes were sound.
func parseTombs(b []byte, fn func(name string, ver uint64)) int {
	good := 0
	for len(b)-good >= tombFixed {
		rec := b[good:]
		n := int(binary.LittleEndian.Uint16(rec))
		if len(rec) < tombFixed+n {
			break
		}
		body := rec[:2+n+8]
		if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(rec[2+n+8:]) {
			break
		}
		name := string(rec[2 : 2+n])
		if !backend.ValidName(name) {
			break
		}
		fn(name, binary.LittleEndian.Uint64(rec[2+n:]))
		good += tombFixed + n
	}
	return good
}
