package agent

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/aio"
	"github.com/ferrymigrate/ferry/internal/directio"
	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/track"
)

func TestTakeDirty(t *testing.T) {
	const chunk = 64 << 10
	now := time.Unix(1, 0)
	tests := []struct {
		name  string
		adds  [][2]int64
		sweep int64
		want  []track.Extent
		left  int64 // bytes left in the map
	}{
		{"scattered blocks in one batch, from the sweep on and wrapping",
			[][2]int64{{0, 4096}, {40960, 4096}, {81920, 4096}}, 40960,
			[]track.Extent{{Offset: 40960, Length: 4096}, {Offset: 81920, Length: 4096}, {Offset: 0, Length: 4096}}, 0},
		{"a large first extent is split at the chunk",
			[][2]int64{{0, 3 * chunk}}, 0,
			[]track.Extent{{Offset: 0, Length: chunk}}, 2 * chunk},
		{"a later extent that does not fit waits whole",
			[][2]int64{{0, 4096}, {8192, chunk}}, 0,
			[]track.Extent{{Offset: 0, Length: 4096}}, chunk},
		{"extents that fill the chunk exactly",
			[][2]int64{{0, chunk / 2}, {chunk, chunk / 2}, {3 * chunk, 4096}}, 0,
			[]track.Extent{{Offset: 0, Length: chunk / 2}, {Offset: chunk, Length: chunk / 2}}, 4096},
		{"empty", nil, 0, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := &engine{chunk: chunk}
			d := &rdisk{dirty: newExtentMap(4096, 0), sweep: tt.sweep}
			for _, a := range tt.adds {
				d.dirty.Add(a[0], a[1], now)
			}
			got := e.takeDirtyLocked(d, nil)
			if len(got) != len(tt.want) {
				t.Fatalf("took %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("took %v, want %v", got, tt.want)
				}
			}
			if d.dirty.Bytes() != tt.left {
				t.Fatalf("%d bytes left, want %d", d.dirty.Bytes(), tt.left)
			}
		})
	}
	// Never more than maxDirtyBatch extents, however small.
	e := &engine{chunk: 16 << 20}
	d := &rdisk{dirty: newExtentMap(4096, 0)}
	for i := range int64(1000) {
		d.dirty.Add(i*8192, 4096, now)
	}
	if got := e.takeDirtyLocked(d, nil); len(got) != maxDirtyBatch {
		t.Fatalf("took %d extents, want %d", len(got), maxDirtyBatch)
	}
}

// TestReadExtents reads a batch of dirty extents the three ways the sender
// can: native AIO, one pread each (no AIO), and AIO falling back when a
// read comes back short at the device's end.
func TestReadExtents(t *testing.T) {
	const size = 4 << 20
	want := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(want)
	dev := testDevice(t, want)
	if dev.direct == nil {
		t.Logf("O_DIRECT refused here: the batches are read one extent at a time")
	}
	e := &engine{chunk: 1 << 20, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	d := &rdisk{dev: dev}
	rnd := rand.New(rand.NewPCG(1, 1))
	batch := func() []track.Extent {
		var xs []track.Extent
		for range 100 {
			xs = append(xs, track.Extent{Offset: rnd.Int64N(size/4096) * 4096, Length: 4096})
		}
		return append(xs, track.Extent{Offset: 8192, Length: 256 << 10})
	}
	check := func(name string, s *sender, xs []track.Extent) {
		t.Helper()
		got, err := s.readExtents(e, d, xs)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i, x := range xs {
			end := min(x.Offset+x.Length, size)
			w := append(append([]byte(nil), want[x.Offset:end]...), make([]byte, x.Offset+x.Length-end)...)
			if !bytes.Equal(got[i], w) {
				t.Fatalf("%s: extent %d (%d bytes at %d) read wrong", name, i, x.Length, x.Offset)
			}
		}
	}
	s := &sender{buf: directio.Buf(int(e.chunk))}
	defer s.closeReaders()
	check("aio", s, batch())
	if dev.direct != nil && s.readers[d.idx] == nil {
		t.Fatal("no batch reader on a device opened with O_DIRECT")
	}
	// Past the end the device reads zeros: AIO comes back short and the
	// batch is read again one extent at a time; the reader stays.
	check("past the end", s, []track.Extent{{Offset: 0, Length: 4096}, {Offset: size - 4096, Length: 8192}})
	if dev.direct != nil && s.readers[d.idx] == nil {
		t.Fatal("a short read dropped the batch reader")
	}
	check("aio again", s, batch())
	// A broken reader is dropped for good.
	if r := s.readers[d.idx]; r != nil {
		r.Close()
		check("broken", s, batch())
		if r, ok := s.readers[d.idx]; !ok || r != nil {
			t.Fatal("a broken batch reader was kept")
		}
	}
	check("one at a time", &sender{buf: directio.Buf(int(e.chunk)), readers: map[int]*aio.Reader{0: nil}}, batch())
}

// TestSyncPipe reads a disk of zero, text and random chunks (the last one
// short) through the initial-sync pipe, releasing each result only after
// the next ones arrived, so readers reuse released buffers while others
// are still held: every payload must still be its chunk, in order.
func TestSyncPipe(t *testing.T) {
	const chunk = 64 << 10
	const size = 40*chunk + 12288
	want := make([]byte, size)
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := 0; i*chunk < size; i++ {
		b := want[i*chunk : min((i+1)*chunk, size)]
		switch i % 3 {
		case 1:
			for j := range b {
				b[j] = "ferry moves servers\n"[j%20]
			}
		case 2:
			for j := range b {
				b[j] = byte(rnd.Uint32())
			}
		}
	}
	dev := testDevice(t, want)
	for _, codec := range []protocol.Codec{protocol.Zstd, protocol.S2} {
		t.Run(codec.String(), func(t *testing.T) {
			testSyncPipe(t, dev, want, codec)
		})
	}
}

func testSyncPipe(t *testing.T, dev *device, want []byte, codec protocol.Codec) {
	const chunk = 64 << 10
	size := int64(len(want))
	e := &engine{chunk: chunk, o: Options{Readers: 3}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	e.syncCodec.Store(uint32(codec))
	d := &rdisk{dev: dev, size: size}
	p := e.startPipe(context.Background(), d, 0)
	defer p.stop()
	dec, err := protocol.NewDecompressor()
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	var held []chunkResult
	var kinds [3]int
	off := int64(0)
	for f := range p.futs {
		r := <-f
		if r.err != nil {
			t.Fatal(r.err)
		}
		held = append(held, r)
		if len(held) > 3 {
			held[0].release()
			held = held[1:]
		}
		if r.off != off {
			t.Fatalf("chunk at %d came where %d was due", r.off, off)
		}
		src := want[r.off : r.off+r.n]
		switch {
		case r.zero:
			kinds[0]++
			if !bytes.Equal(src, make([]byte, r.n)) {
				t.Fatalf("chunk at %d reported zero", r.off)
			}
		case r.flags != 0:
			kinds[1]++
			if r.flags != codec.Flag() {
				t.Fatalf("chunk at %d has flags %#x, want %s's", r.off, r.flags, codec)
			}
			got, err := dec.Payload(&protocol.Write{Flags: r.flags, RawLen: uint32(r.n), Data: r.data}, nil)
			if err != nil || !bytes.Equal(got, src) {
				t.Fatalf("compressed chunk at %d does not decode to the disk's bytes (%v)", r.off, err)
			}
		default:
			kinds[2]++
			if !bytes.Equal(r.data, src) {
				t.Fatalf("chunk at %d is not the disk's bytes", r.off)
			}
		}
		off += r.n
	}
	// Check the held ones again: a buffer given to the next read while
	// still held would show here.
	for _, r := range held {
		got := r.data
		if r.flags != 0 {
			if got, err = dec.Payload(&protocol.Write{Flags: r.flags, RawLen: uint32(r.n), Data: r.data}, nil); err != nil {
				t.Fatalf("held chunk at %d: %v", r.off, err)
			}
		}
		if !r.zero && !bytes.Equal(got, want[r.off:r.off+r.n]) {
			t.Fatalf("held chunk at %d was overwritten", r.off)
		}
	}
	if off != size {
		t.Fatalf("pipe ended at %d of %d", off, size)
	}
	if kinds[0] == 0 || kinds[1] == 0 || kinds[2] == 0 {
		t.Fatalf("zero/compressed/raw chunks: %v; the disk holds all three", kinds)
	}
}

// TestSyncCodec: the initial sync is compressed with S2 only when the
// server decodes it, and with the operator's choice otherwise.
func TestSyncCodec(t *testing.T) {
	tests := []struct {
		asked    protocol.Codec
		revision uint16
		want     protocol.Codec
	}{
		{0, protocol.RevisionS2, protocol.S2},
		{0, protocol.RevisionS2 + 1, protocol.S2},
		{0, protocol.RevisionStatsTiming, protocol.Zstd},
		{0, protocol.RevisionBase, protocol.Zstd},
		{protocol.S2, protocol.RevisionStatsTiming, protocol.Zstd},
		{protocol.Zstd, protocol.RevisionS2, protocol.Zstd},
		{protocol.S2, protocol.RevisionS2, protocol.S2},
	}
	for _, tt := range tests {
		if got := syncCodec(tt.asked, tt.revision); got != tt.want {
			t.Errorf("syncCodec(%v, revision %d) = %v, want %v", tt.asked, tt.revision, got, tt.want)
		}
	}
}

func TestParseSyncCodec(t *testing.T) {
	tests := []struct {
		in   string
		want protocol.Codec
		err  bool
	}{
		{"auto", 0, false}, {"", 0, false}, {"s2", protocol.S2, false}, {"zstd", protocol.Zstd, false},
		{"ZSTD", 0, true}, {"lz4", 0, true}, {"none", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSyncCodec(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseSyncCodec(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.err)
		}
		if err != nil && !strings.Contains(err.Error(), tt.in) {
			t.Errorf("error %q does not name %q", err, tt.in)
		}
	}
}
