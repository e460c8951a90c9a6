package replica

import (
	"bytes"
	"context"
	"math/bits"
	"math/rand/v2"
	"testing"

	"github.com/ferrymigrate/ferry/protocol"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// TestAppendFrame checks that a whole chunk written with the agent's zstd
// frame or S2 block is stored as that (not compressed again), that frames
// the store cannot keep are ignored, and that every write reads back,
// folded, after a reopen and under Verify.
func TestAppendFrame(t *testing.T) {
	// The data plane's decoder allows windows and output up to
	// MaxPayload; the store keeps frames it accepted only if its own
	// decoder allows at least as much.
	if protocol.MaxPayload > MaxFrameBytes {
		t.Fatalf("protocol.MaxPayload %d exceeds MaxFrameBytes %d: raise MaxFrameBytes with it", protocol.MaxPayload, MaxFrameBytes)
	}
	ctx := context.Background()
	e := newEnv(t)
	cs := int64(e.opts.ChunkSize)
	rng := rand.New(rand.NewPCG(3, 4))
	text := func(n int64) []byte {
		b := make([]byte, 0, n+64)
		for int64(len(b)) < n {
			b = append(b, []byte([]string{"ferry ", "replicates ", "block ", "devices ", "over TLS; "}[rng.IntN(5)])...)
		}
		return b[:n]
	}
	random := func(n int64) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// frame compresses content with opts; a window other than 0 is then
	// written into the frame's header.
	frame := func(t *testing.T, content []byte, window int, opts ...zstd.EOption) []byte {
		t.Helper()
		enc, err := zstd.NewWriter(nil, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer enc.Close()
		z := enc.EncodeAll(content, nil)
		if window != 0 {
			// klauspost's encoder never declares a window beyond the
			// content, but an agent's frame may: rewrite the header's
			// window descriptor (RFC 8878 3.1.1.1.2: exponent in the top
			// five bits, log2 window = 10 + exponent).
			var hd zstd.Header
			if err := hd.Decode(z); err != nil || hd.SingleSegment {
				t.Fatalf("frame header %+v, %v: want a window descriptor", hd, err)
			}
			z[5] = byte(bits.Len(uint(window))-1-10) << 3
			if err := hd.Decode(z); err != nil || hd.WindowSize != uint64(window) {
				t.Fatalf("widened frame header %+v, %v", hd, err)
			}
			// The data plane's decoder accepts it.
			w := &protocol.Write{Flags: protocol.FlagZstd, RawLen: uint32(len(content)), Data: z}
			dz, err := protocol.NewDecompressor()
			if err != nil {
				t.Fatal(err)
			}
			defer dz.Close()
			if got, err := dz.Payload(w, nil); err != nil || !bytes.Equal(got, content) {
				t.Fatalf("the data plane's decoder refuses the widened frame: %v", err)
			}
		}
		return z
	}
	// s2Frame marks a case whose frame is an S2 block, made by
	// s2.EncodeBetter when its window is s2Better.
	const s2Frame, s2Better = -1, 1
	compress := func(t *testing.T, content []byte, window int, opts ...zstd.EOption) Frame {
		switch {
		case window == s2Frame && len(opts) == 0:
			return Frame{Codec: CodecS2, Data: s2.Encode(nil, content)}
		case window == s2Frame:
			return Frame{Codec: CodecS2, Data: s2.EncodeBetter(nil, content)}
		}
		return Frame{Codec: CodecZstd, Data: frame(t, content, window, opts...)}
	}
	best := zstd.WithEncoderLevel(zstd.SpeedBestCompression)
	tests := []struct {
		name    string
		off     int64
		content []byte
		window  int // s2Frame: an S2 block (with opts: s2.EncodeBetter's)
		opts    []zstd.EOption
		// kept: the chunk's stored object is the frame plus the seal.
		kept bool
	}{
		{"whole chunk, agent's settings", 0, text(cs), 0, []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithLowerEncoderMem(true)}, true},
		// At the best level the frame differs from what the store would
		// make at its own, so keeping it shows in the stored size.
		{"whole chunk, best level", cs, text(cs), 0, []zstd.EOption{best}, true},
		// The data plane's decoder accepts windows up to MaxFrameBytes;
		// the store must read such a frame back.
		{"whole chunk, 8 MiB window", 2 * cs, text(cs), 8 << 20, []zstd.EOption{best, zstd.WithSingleSegment(false)}, true},
		{"whole chunk, incompressible", 3 * cs, random(cs), 0, nil, false},
		{"part of a chunk", 4*cs + 4096, text(8192), 0, []zstd.EOption{best}, false},
		{"two chunks", 6 * cs, text(2 * cs), 0, []zstd.EOption{best}, false},
		{"whole chunk, S2", 8 * cs, text(cs), s2Frame, nil, true},
		{"whole chunk, S2 better", 9 * cs, text(cs), s2Frame, []zstd.EOption{best}, true},
		{"whole chunk, S2 incompressible", 10 * cs, random(cs), s2Frame, nil, false},
		{"part of a chunk, S2", 11*cs + 4096, text(8192), s2Frame, nil, false},
	}
	const size = 16 << 20
	m := &model{b: make([]byte, size)}
	s := e.open(t)
	d, err := s.CreateDisk(ctx, "disk-1", size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	var seq uint64
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := compress(t, tt.content, tt.window, tt.opts...)
			seq++
			c, err := d.AppendFrame(seq, tt.off, tt.content, z)
			if err != nil {
				t.Fatal(err)
			}
			clear(z.Data) // the store must not read the frame after the call
			if err := c.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			m.write(tt.off, tt.content)
			if err := d.Fold(ctx); err != nil {
				t.Fatal(err)
			}
			// The chunk's object, opened, holds the frame itself.
			z = compress(t, tt.content, tt.window, tt.opts...)
			h := s.sl.hash(tt.content[:min(cs, int64(len(tt.content)))])
			obj, err := e.be.Get(ctx, chunkName(h))
			kept := false
			if err == nil {
				plain, err := s.sl.open(chunkName(h), kindChunk, obj)
				if err != nil {
					t.Fatal(err)
				}
				kept = Codec(plain[0]) == z.Codec && bytes.Equal(plain[5:], z.Data)
			}
			if kept != tt.kept {
				t.Errorf("frame kept as the stored chunk = %v, want %v", kept, tt.kept)
			}
			checkHead(t, d, m.b)
		})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = e.open(t)
	defer s.Close()
	if d, err = s.Disk("disk-1"); err != nil {
		t.Fatal(err)
	}
	checkHead(t, d, m.b)
	rep, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("verify: %+v", rep.Problems)
	}
}
