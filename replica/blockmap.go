package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
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

// encodePage encodes a page: "FPG1" | entry count u32 | entries × 32 bytes.
func encodePage(entries []Hash) []byte {
	b := make([]byte, pageHeaderSize, pageHeaderSize+32*len(entries))
	copy(b, pageMagic)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(entries)))
	for _, e := range entries {
		b = append(b, e[:]...)
	}
	return b
}

// checkPage validates a page's encoding and returns its entry count.
func checkPage(b []byte) (int, error) {
	if len(b) < pageHeaderSize || string(b[:4]) != pageMagic {
		return 0, errors.New("bad page header")
	}
	n := int(binary.LittleEndian.Uint32(b[4:]))
	if n < 1 || n > pageEntries {
		return 0, fmt.Errorf("page has %d entries", n)
	}
	if len(b) != pageHeaderSize+32*n {
		return 0, fmt.Errorf("page is %d bytes, want %d", len(b), pageHeaderSize+32*n)
	}
	return n, nil
}

// decodePage decodes a page's entries.
func decodePage(b []byte) ([]Hash, error) {
	n, err := checkPage(b)
	if err != nil {
		return nil, err
	}
	out := make([]Hash, n)
	for i := range out {
		copy(out[i][:], b[pageHeaderSize+32*i:])
	}
	return out, nil
}

// pageEntry returns entry i of a page checked by checkPage; past the end is zero.
func pageEntry(b []byte, i int) Hash {
	var h Hash
	if off := pageHeaderSize + 32*i; off+32 <= len(b) {
		copy(h[:], b[off:])
	}
	return h
}

func validChunkSize(n int) bool {
	return n >= 64<<10 && n <= 4<<20 && n&(n-1) == 0
}
