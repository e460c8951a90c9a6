package replica

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/klauspost/compress/s2"
)

// TestChunkCompression checks which chunks are stored compressed and that
// every one reads back as written.
func TestChunkCompression(t *testing.T) {
	sl, err := newSealer(XChaCha20Poly1305, bytes.Repeat([]byte{7}, 64), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.close()
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	text := func(n int) []byte {
		return bytes.Repeat([]byte("ferry replicates block devices; "), n/32+1)[:n]
	}
	const mib = 1 << 20
	tests := []struct {
		name    string
		content []byte
		want    Codec
	}{
		{"text", text(mib), CodecZstd},
		{"random", random(mib), compNone},
		{"random with text at the end", append(random(mib/2), text(mib/2)...), CodecZstd},
		{"text with random at the end", append(text(mib/4), random(3*mib/4)...), CodecZstd},
		{"small text", text(8 << 10), CodecZstd},
		{"small random", random(8 << 10), compNone},
		{"tiny", text(100), compNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := sl.hash(tt.content)
			obj := sl.encodeChunk(h, tt.content, Frame{}, nil)
			payload, err := sl.open(chunkName(h), kindChunk, obj)
			if err != nil {
				t.Fatal(err)
			}
			if Codec(payload[0]) != tt.want {
				t.Errorf("stored with compression %d, want %d", payload[0], tt.want)
			}
			got, err := sl.decodeChunk(h, obj)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.content) {
				t.Error("chunk reads back different")
			}
		})
	}
}

// BenchmarkEncodeChunk measures compressing (when it pays) and sealing
// one 1 MiB chunk of random data and of text.
func BenchmarkEncodeChunk(b *testing.B) {
	sl, err := newSealer(XChaCha20Poly1305, bytes.Repeat([]byte{7}, 64), 1<<20)
	if err != nil {
		b.Fatal(err)
	}
	defer sl.close()
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 1<<20)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	text := bytes.Repeat([]byte("ferry replicates block devices; "), 1<<15)
	for _, c := range []struct {
		name    string
		content []byte
	}{{"random", random}, {"text", text}} {
		b.Run(c.name, func(b *testing.B) {
			h := sl.hash(c.content)
			dst := make([]byte, 0, 2<<20)
			b.SetBytes(int64(len(c.content)))
			for b.Loop() {
				dst = sl.encodeChunk(h, c.content, Frame{}, dst[:0])
			}
		})
	}
}

// TestDecodeChunkPayloadS2 checks that an S2 chunk payload decodes only
// when its block is sound and says the length the chunk header says.
func TestDecodeChunkPayloadS2(t *testing.T) {
	sl, err := newSealer(XChaCha20Poly1305, bytes.Repeat([]byte{7}, 64), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.close()
	content := bytes.Repeat([]byte("ferry replicates block devices; "), 1000)
	block := s2.Encode(nil, content)
	n := uint32(len(content))
	tests := []struct {
		name    string
		payload []byte
		err     string // "" when it must decode to content
	}{
		{"sound", s2Payload(content, n), ""},
		{"header says less", s2Payload(content, n-1), "s2 block decodes to"},
		{"header says more", s2Payload(content, n+1), "s2 block decodes to"},
		{"over the chunk size", s2Payload(bytes.Repeat([]byte{1}, 1<<20+1), 1<<20+1), "exceeds the maximum"},
		{"truncated", s2Payload(content, n)[:5+len(block)/2], "s2:"},
		{"no block", s2Payload(content, n)[:5], "s2:"},
		{"corrupt", append(s2Payload(content, n)[:5+len(block)-8], 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), "s2:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := sl.decodeChunkPayload(tt.payload)
			switch {
			case tt.err == "" && err != nil:
				t.Fatal(err)
			case tt.err == "" && !bytes.Equal(got, content):
				t.Fatal("decoded content differs")
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("error %v, want one containing %q", err, tt.err)
			}
		})
	}
}
