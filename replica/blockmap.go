package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// A block map says which chunk holds each chunk-sized piece of a disk at
// one sequence number. It is a two-level tree: the root lists page hashes,
// each page (stored as an ordinary content-addressed chunk, so unchanged
// pages are shared between maps) lists pageEntries chunk hashes. A zero
// hash at either level means all zeros.

// pageEntries is the number of chunk hashes in a full page (32 KiB).
const pageEntries = 1024

const (
	mapMagic       = "FMP1"
	mapHeaderSize  = 4 + 8 + 8 + 4 + 4 + 8 + 8 + 8 + 4
	pageMagic      = "FPG1"
	pageMagicDelta = "FPG2"
	pageHeaderSize = 8
	maxDiskSize    = 1 << 50 // 1 PiB
)

// blockMap is a decoded map root.
type blockMap struct {
	seq          uint64
	size         int64
	chunkSize    int
	time         int64 // Unix nanoseconds when the map was published
	crashBarrier uint64
	appBarrier   uint64
	pages        []Hash
}

func mapName(disk string, seq uint64) string { return fmt.Sprintf("maps/%s/%016x", disk, seq) }

// numChunks returns how many chunks cover size bytes.
func numChunks(size int64, chunkSize int) int64 {
	return (size + int64(chunkSize) - 1) / int64(chunkSize)
}

// encodeMap encodes a map root:
//
//	"FMP1" | seq u64 | size u64 | chunk size u32 | page entries u32 |
//	time i64 | crash barrier u64 | app barrier u64 | page count u32 |
//	page count × 32-byte page hash
//
// all little endian.
func encodeMap(m *blockMap) []byte {
	b := make([]byte, mapHeaderSize, mapHeaderSize+32*len(m.pages))
	copy(b, mapMagic)
	binary.LittleEndian.PutUint64(b[4:], m.seq)
	binary.LittleEndian.PutUint64(b[12:], uint64(m.size))
	binary.LittleEndian.PutUint32(b[20:], uint32(m.chunkSize))
	binary.LittleEndian.PutUint32(b[24:], pageEntries)
	binary.LittleEndian.PutUint64(b[28:], uint64(m.time))
	binary.LittleEndian.PutUint64(b[36:], m.crashBarrier)
	binary.LittleEndian.PutUint64(b[44:], m.appBarrier)
	binary.LittleEndian.PutUint32(b[52:], uint32(len(m.pages)))
	for _, p := range m.pages {
		b = append(b, p[:]...)
	}
	return b
}

// decodeMap decodes and validates a map root.
func decodeMap(b []byte) (*blockMap, error) {
	if len(b) < mapHeaderSize {
		return nil, errors.New("map root too short")
	}
	if string(b[:4]) != mapMagic {
		return nil, errors.New("bad map magic")
	}
	m := &blockMap{
		seq:          binary.LittleEndian.Uint64(b[4:]),
		size:         int64(binary.LittleEndian.Uint64(b[12:])),
		chunkSize:    int(binary.LittleEndian.Uint32(b[20:])),
		time:         int64(binary.LittleEndian.Uint64(b[28:])),
		crashBarrier: binary.LittleEndian.Uint64(b[36:]),
		appBarrier:   binary.LittleEndian.Uint64(b[44:]),
	}
	if pe := binary.LittleEndian.Uint32(b[24:]); pe != pageEntries {
		return nil, fmt.Errorf("map has %d entries per page, want %d", pe, pageEntries)
	}
	if m.size < 0 || m.size > maxDiskSize {
		return nil, fmt.Errorf("disk size %d out of range", m.size)
	}
	if !validChunkSize(m.chunkSize) {
		return nil, fmt.Errorf("chunk size %d invalid", m.chunkSize)
	}
	if m.crashBarrier > m.seq || m.appBarrier > m.seq {
		return nil, errors.New("barrier after the map's sequence number")
	}
	n := int64(binary.LittleEndian.Uint32(b[52:]))
	want := (numChunks(m.size, m.chunkSize) + pageEntries - 1) / pageEntries
	if n != want {
		return nil, fmt.Errorf("map has %d pages, a %d-byte disk needs %d", n, m.size, want)
	}
	if int64(len(b)-mapHeaderSize) != 32*n {
		return nil, fmt.Errorf("map root is %d bytes, want %d", len(b), mapHeaderSize+32*n)
	}
	m.pages = make([]Hash, n)
	for i := range m.pages {
		copy(m.pages[i][:], b[mapHeaderSize+32*i:])
	}
	return m, nil
}

// entry is one chunk's place in a page: the chunk object h, or, for a
// delta entry, the patch object h laid over the full chunk base (a zero
// base is all zeros). A delta is always against a full chunk, never
// against another delta, so a read costs at most two objects.
type entry struct {
	h, base Hash
	delta   bool
}

// full is the entry's full chunk: the chunk itself or a delta's base.
func (e entry) full() Hash {
	if e.delta {
		return e.base
	}
	return e.h
}

// isZero reports whether the entry reads as all zeros.
func (e entry) isZero() bool { return !e.delta && e.h.IsZero() }

// encodePage encodes a page. Without delta entries it is
//
//	"FPG1" | entry count u32 | entries × 32-byte chunk hash
//
// and with any (store format 3) it is
//
//	"FPG2" | entry count u32 | delta bitmap (count/8 bytes, rounded up) |
//	entries: 32-byte hash, followed by the 32-byte base for a delta
//
// so pages of maps without deltas keep format 2's bytes (and hashes).
func encodePage(entries []entry) []byte {
	deltas := 0
	for _, e := range entries {
		if e.delta {
			deltas++
		}
	}
	if deltas == 0 {
		b := make([]byte, pageHeaderSize, pageHeaderSize+32*len(entries))
		copy(b, pageMagic)
		binary.LittleEndian.PutUint32(b[4:], uint32(len(entries)))
		for _, e := range entries {
			b = append(b, e.h[:]...)
		}
		return b
	}
	bm := (len(entries) + 7) / 8
	b := make([]byte, pageHeaderSize+bm, pageHeaderSize+bm+32*(len(entries)+deltas))
	copy(b, pageMagicDelta)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(entries)))
	for i, e := range entries {
		b = append(b, e.h[:]...)
		if e.delta {
			b[pageHeaderSize+i/8] |= 1 << (i % 8)
			b = append(b, e.base[:]...)
		}
	}
	return b
}

// checkPage validates a page's encoding and returns its entry count.
func checkPage(b []byte) (int, error) {
	if len(b) < pageHeaderSize || (string(b[:4]) != pageMagic && string(b[:4]) != pageMagicDelta) {
		return 0, errors.New("bad page header")
	}
	n := int(binary.LittleEndian.Uint32(b[4:]))
	if n < 1 || n > pageEntries {
		return 0, fmt.Errorf("page has %d entries", n)
	}
	want := pageHeaderSize + 32*n
	if string(b[:4]) == pageMagicDelta {
		bm := (n + 7) / 8
		if len(b) < pageHeaderSize+bm {
			return 0, errors.New("page delta bitmap truncated")
		}
		bits := b[pageHeaderSize : pageHeaderSize+bm]
		deltas := 0
		for _, x := range bits {
			deltas += onesCount8(x)
		}
		if n%8 != 0 && bits[bm-1]>>(n%8) != 0 {
			return 0, errors.New("page delta bitmap flags entries past its count")
		}
		if deltas == 0 {
			return 0, errors.New("delta page without deltas")
		}
		want = pageHeaderSize + bm + 32*(n+deltas)
	}
	if len(b) != want {
		return 0, fmt.Errorf("page is %d bytes, want %d", len(b), want)
	}
	return n, nil
}

// decodePage decodes a page's entries.
func decodePage(b []byte) ([]entry, error) {
	n, err := checkPage(b)
	if err != nil {
		return nil, err
	}
	out := make([]entry, n)
	if string(b[:4]) == pageMagic {
		for i := range out {
			copy(out[i].h[:], b[pageHeaderSize+32*i:])
		}
		return out, nil
	}
	bm := (n + 7) / 8
	off := pageHeaderSize + bm
	for i := range out {
		copy(out[i].h[:], b[off:])
		off += 32
		if b[pageHeaderSize+i/8]&(1<<(i%8)) != 0 {
			out[i].delta = true
			copy(out[i].base[:], b[off:])
			off += 32
		}
	}
	return out, nil
}

// pageEntry returns entry i of a page checked by checkPage; past the end
// is zero.
func pageEntry(b []byte, i int) entry {
	var e entry
	n := int(binary.LittleEndian.Uint32(b[4:]))
	if i < 0 || i >= n {
		return e
	}
	if string(b[:4]) == pageMagic {
		copy(e.h[:], b[pageHeaderSize+32*i:])
		return e
	}
	bits := b[pageHeaderSize : pageHeaderSize+(n+7)/8]
	before := 0
	for _, x := range bits[:i/8] {
		before += onesCount8(x)
	}
	before += onesCount8(bits[i/8] & (1<<(i%8) - 1))
	off := pageHeaderSize + len(bits) + 32*(i+before)
	copy(e.h[:], b[off:])
	if bits[i/8]&(1<<(i%8)) != 0 {
		e.delta = true
		copy(e.base[:], b[off+32:])
	}
	return e
}

func onesCount8(x byte) int { return bits.OnesCount8(x) }

func validChunkSize(n int) bool {
	return n >= 64<<10 && n <= 4<<20 && n&(n-1) == 0
}
