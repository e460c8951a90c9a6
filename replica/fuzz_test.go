package replica

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/s2"
)

// Fuzz targets for every on-disk format parser. Seed corpora live in
// testdata/fuzz/<target>; run e.g.
//
//	go test ./replica -run '^$' -fuzz FuzzDecodeRecord -fuzztime 30s

func FuzzDecodeRecord(f *testing.F) {
	f.Add(appendRecord(nil, record{typ: recWrite, seq: 1, off: 4096, length: 8}, []byte("12345678")))
	f.Add(appendRecord(nil, record{typ: recZero, seq: 2, off: 0, length: 1 << 20}, nil))
	f.Add(appendRecord(nil, record{typ: recBarrier, flag: byte(AppConsistent), seq: 3}, nil))
	f.Add(appendRecord(nil, record{typ: recResize, seq: 4, off: 1 << 30}, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, payload, n, err := decodeRecord(b)
		if err != nil {
			return
		}
		if n > len(b) || n < recHeaderSize || len(payload) != n-recHeaderSize {
			t.Fatalf("decodeRecord: n=%d payload=%d input=%d", n, len(payload), len(b))
		}
		// A record that decodes re-encodes to the same bytes.
		if got := appendRecord(nil, r, payload); !bytes.Equal(got, b[:n]) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func FuzzDecodeMap(f *testing.F) {
	f.Add(encodeMap(&blockMap{seq: 7, size: 3 << 20, chunkSize: 1 << 20, time: 1, crashBarrier: 5, appBarrier: 3, pages: []Hash{{1, 2, 3}}}))
	f.Add(encodeMap(&blockMap{seq: 1, size: 0, chunkSize: 64 << 10}))
	f.Add(encodeMap(&blockMap{seq: 9, size: 2048 << 16, chunkSize: 64 << 10, pages: make([]Hash, 2)}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMap(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeMap(m), b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func FuzzDecodePage(f *testing.F) {
	f.Add(encodePage([]entry{{h: Hash{1}}, {}, {h: Hash{2}}}))
	f.Add(encodePage(make([]entry, pageEntries)))
	f.Add(encodePage([]entry{{h: Hash{1}}, {h: Hash{3}, base: Hash{4}, delta: true}, {}, {h: Hash{5}, delta: true}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := decodePage(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodePage(entries), b) {
			t.Fatalf("re-encoding differs")
		}
		for i := range entries {
			if pageEntry(b, i) != entries[i] {
				t.Fatalf("pageEntry(%d) differs", i)
			}
		}
	})
}

// FuzzDecodePatch feeds arbitrary bytes to the delta patch decoder: a patch
// that decodes applies to any range without panicking and re-encodes to
// the same bytes.
func FuzzDecodePatch(f *testing.F) {
	f.Add(encodePatch(bytes.Repeat([]byte{1}, 3*patchPage), []byte{0b101}, 2), int64(0), 100)
	f.Add(encodePatch(bytes.Repeat([]byte{2}, patchPage+100), []byte{0b10}, 1), int64(4000), 200)
	f.Fuzz(func(t *testing.T, b []byte, at int64, n int) {
		p, err := decodePatch(b, 1<<20)
		if err != nil {
			return
		}
		full := make([]byte, p.n)
		p.apply(full, 0)
		changed := 0
		for i := 0; i < patchPages(p.n); i++ {
			if p.bitmap[i/8]&(1<<(i%8)) != 0 {
				changed++
			}
		}
		if !bytes.Equal(encodePatch(full, p.bitmap, changed), b) {
			t.Fatalf("re-encoding differs")
		}
		if at < 0 || at > int64(p.n) || n < 0 || n > 1<<20 {
			return
		}
		part := make([]byte, n)
		p.apply(part, at)
		want := make([]byte, n)
		if at < int64(len(full)) {
			copy(want, full[at:])
		}
		if !bytes.Equal(part, want) {
			t.Fatalf("apply at %d of %d bytes differs from the whole chunk", at, n)
		}
	})
}

// FuzzOpenChunk feeds arbitrary bytes to the chunk envelope and payload
// decoder: it must return an error, never panic or return wrong data.
func FuzzOpenChunk(f *testing.F) {
	keys := bytes.Repeat([]byte{7}, 64)
	sl, err := newSealer(XChaCha20Poly1305, keys, 1<<20)
	if err != nil {
		f.Fatal(err)
	}
	content := bytes.Repeat([]byte("ferry"), 1000)
	h := sl.hash(content)
	f.Add(h[:], sl.encodeChunk(h, content, Frame{}, nil))
	f.Add(h[:], sl.encodeChunk(h, content, Frame{Codec: CodecS2, Data: s2.Encode(nil, content)}, nil))
	f.Add(h[:], s2Payload(content, 100))
	f.Add(h[:], []byte("FRO1\x01\x01"))
	f.Add(h[:], []byte{})
	f.Fuzz(func(t *testing.T, hb []byte, obj []byte) {
		var h Hash
		copy(h[:], hb)
		got, err := sl.decodeChunk(h, obj)
		if err == nil && sl.hash(got) != h {
			t.Fatalf("decodeChunk returned content that does not match its hash")
		}
		// The payload decoder alone, as if the seal had been forged.
		_, _ = sl.decodeChunkPayload(obj)
	})
}

// s2Payload is a chunk's plaintext holding content as an S2 block whose
// header says n bytes.
func s2Payload(content []byte, n uint32) []byte {
	return append(binary.LittleEndian.AppendUint32([]byte{byte(CodecS2)}, n), s2.Encode(nil, content)...)
}

// TestWriteFuzzCorpus refreshes the committed seed corpus under
// testdata/fuzz when FERRY_UPDATE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("FERRY_UPDATE_CORPUS") != "1" {
		t.Skip("set FERRY_UPDATE_CORPUS=1 to rewrite testdata/fuzz")
	}
	sl, err := newSealer(XChaCha20Poly1305, bytes.Repeat([]byte{7}, 64), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("ferry"), 1000)
	h := sl.hash(content)
	corpus := map[string][][]byte{
		"FuzzDecodeRecord": {
			appendRecord(nil, record{typ: recWrite, seq: 1, off: 4096, length: 8}, []byte("12345678")),
			appendRecord(nil, record{typ: recZero, seq: 2, length: 1 << 20}, nil),
			appendRecord(nil, record{typ: recBarrier, flag: byte(CrashConsistent), seq: 3}, nil),
			appendRecord(nil, record{typ: recResize, seq: 4, off: 1 << 30}, nil)[:30],
		},
		"FuzzDecodeMap": {
			encodeMap(&blockMap{seq: 7, size: 3 << 20, chunkSize: 1 << 20, pages: []Hash{{1, 2, 3}}}),
			encodeMap(&blockMap{seq: 1, chunkSize: 64 << 10}),
		},
		"FuzzDecodePage": {
			encodePage([]entry{{h: Hash{1}}, {}, {h: Hash{2}}}),
			encodePage([]entry{{h: Hash{9}}})[:20],
			encodePage([]entry{{h: Hash{1}}, {h: Hash{3}, base: Hash{4}, delta: true}, {}, {h: Hash{5}, delta: true}}),
		},
	}
	for target, inputs := range corpus {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, in := range inputs {
			data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", in)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%d", i)), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodePatch")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, in := range [][]byte{
		encodePatch(bytes.Repeat([]byte{1}, 3*patchPage), []byte{0b101}, 2),
		encodePatch(bytes.Repeat([]byte{2}, patchPage+100), []byte{0b10}, 1),
		[]byte("FDL1\x00\x10\x00\x00\x01"),
	} {
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nint64(%d)\nint(%d)\n", in, 4000*i, 300)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%d", i)), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join("testdata", "fuzz", "FuzzOpenChunk")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, obj := range [][]byte{sl.encodeChunk(h, content, Frame{}, nil), []byte("FRO1\x01\x01short"),
		sl.encodeChunk(h, content, Frame{Codec: CodecS2, Data: s2.Encode(nil, content)}, nil), s2Payload(content, 100)} {
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n[]byte(%q)\n", h[:], obj)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%d", i)), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
