package dataplane_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/protocol"
)

// bytesDisk is a disk image in memory without extents, so HashRange reads
// and hashes every block of it.
type bytesDisk []byte

func (b bytesDisk) Size() int64 { return int64(len(b)) }

func (b bytesDisk) ReadAt(p []byte, off int64) (int, error) {
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TestHashRangeSkipsZeros compares HashRange over a replica reader, which
// skips the stretches its extents say are zeros, with HashRange over the
// same bytes read in full: folded chunks, journal overlays, written zeros,
// never-written space, a block straddling data and zeros, and blocks past
// the end of the disk.
func TestHashRangeSkipsZeros(t *testing.T) {
	h := newHarness(t)
	ctx := t.Context()
	const mib = 1 << 20
	size := int64(6*mib + 12<<10)
	d, err := h.rs.CreateDisk(ctx, dataplane.DiskID("s-1", "sdz"), size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	want := make(bytesDisk, size)
	rng := rand.New(rand.NewPCG(1, 2))
	seq := uint64(0)
	write := func(off int64, n int) {
		t.Helper()
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(4)) // compressible, never a whole zero block
		}
		seq++
		if err := d.Write(ctx, seq, off, b); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	zero := func(off, n int64) {
		t.Helper()
		seq++
		if err := d.WriteZeroes(ctx, seq, off, n); err != nil {
			t.Fatal(err)
		}
		clear(want[off : off+n])
	}
	write(0, 2*mib) // chunks 0 and 1, folded below
	zero(mib+64<<10, 128<<10)
	if err := d.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	write(mib+100<<10, 4096) // a journal overlay inside the zeros
	zero(40<<10, 8<<10)      // written zeros inside folded data
	write(4*mib-4096, 8192)  // straddles chunks 3 and 4; 2 and most of 3 never written
	write(size-4096, 4096)   // the last block

	r, err := d.OpenHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cases := []struct {
		name     string
		off, len int64
		bs       uint32
	}{
		{"whole disk at 4 KiB", 0, size, 4096},
		{"whole disk at 32 KiB, past the end", 0, 7 * mib, 32 << 10},
		{"never written", 2 * mib, mib, 4096},
		{"zeros then data", 3 * mib, 2 * mib, 32 << 10},
		{"one block straddling zeros and data", mib + 32<<10, 64 << 10, 64 << 10},
		{"a chunk as one block", mib, mib, mib},
		{"blocks larger than a worker's piece, past the end", 0, 8 * mib, 2 * mib},
		{"entirely past the end", 8 * mib, mib, 4096},
		{"tail and past it", size - 8192, 16384, 4096},
	}
	for _, c := range cases {
		m := &protocol.HashRequest{ID: 7, Disk: 2, Offset: c.off, Length: c.len, BlockSize: c.bs, Algo: protocol.HashBLAKE3}
		got, err := dataplane.HashRange(r, m)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		ref, err := dataplane.HashRange(want, m)
		if err != nil {
			t.Fatalf("%s: in memory: %v", c.name, err)
		}
		if got.ID != 7 || got.Disk != 2 || got.Offset != c.off || got.Count() != int(c.len/int64(c.bs)) {
			t.Fatalf("%s: reply %d/%d at %d with %d hashes", c.name, got.ID, got.Disk, got.Offset, got.Count())
		}
		for i := range got.Count() {
			if !bytes.Equal(got.Hash(i), ref.Hash(i)) {
				t.Fatalf("%s: block %d (at %d) hashes %x from the replica, %x from its bytes", c.name, i, c.off+int64(i)*int64(c.bs), got.Hash(i), ref.Hash(i))
			}
		}
	}
}
