package fs

import (
	"bytes"
	"testing"
)

// FuzzReadPackIndex feeds arbitrary bytes as a pack file: reading its
// index must return entries that lie inside it or an error, never panic
// or allocate more than the input.
func FuzzReadPackIndex(f *testing.F) {
	good := []byte(packMagic + "hello, packs")
	good = appendIndex(good, []packEntry{
		{name: "chunks/aa/x", off: 8, size: 5, ver: 1},
		{name: "chunks/bb/y", off: 13, size: 7, ver: 2},
	})
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add([]byte(packMagic + packFooterMagic))
	f.Add(appendIndex([]byte(packMagic), nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := readPackIndex(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		for _, e := range entries {
			if e.off < int64(packHeaderSize) || e.off+int64(e.size) > int64(len(data)) {
				t.Fatalf("entry %+v lies outside a %d-byte pack", e, len(data))
			}
		}
	})
}

// FuzzParseTombs feeds arbitrary bytes as a delete log: the sound prefix
// it reports must parse to the same records again.
func FuzzParseTombs(f *testing.F) {
	f.Add(appendTomb(appendTomb(nil, "chunks/aa/x", 3), "chunks/bb/y", 9))
	f.Add(appendTomb(nil, "chunks/aa/x", 3)[:10])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var n1 int
		good := parseTombs(data, func(string, uint64) { n1++ })
		if good < 0 || good > len(data) {
			t.Fatalf("sound prefix %d of %d bytes", good, len(data))
		}
		var n2 int
		if again := parseTombs(data[:good], func(string, uint64) { n2++ }); again != good || n2 != n1 {
			t.Fatalf("re-parsing the sound prefix: %d bytes, %d records; want %d, %d", again, n2, good, n1)
		}
	})
}
