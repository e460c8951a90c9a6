package replica

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"
)

// TestSmallWritesWithFolds appends many 4 KiB writes at random blocks, as
// continuous replication of a busy source does, while folds run in the
// background and snapshots are taken at exact sequence numbers; every
// snapshot and the head must hold, for every block, the newest write
// before its point.
func TestSmallWritesWithFolds(t *testing.T) {
	e := newEnv(t)
	e.opts.ChunkSize = 1 << 20
	e.opts.FoldInterval = 20 * time.Millisecond
	e.opts.FoldBytes = 256 << 10
	s := e.open(t)
	defer s.Close()
	ctx := context.Background()
	const size, bs = 64 << 20, 4096
	d, err := s.CreateDisk(ctx, "d", size, bs)
	if err != nil {
		t.Fatal(err)
	}
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	type point struct {
		id    string
		model []byte
	}
	var points []point
	var commits []Commit
	seq := uint64(0)
	// An initial sync first: whole chunks, as the agent sends them.
	for off := int64(0); off < size; off += 1 << 20 {
		seq++
		data := make([]byte, 1<<20)
		for b := int64(0); b < 1<<20; b += bs {
			binary.LittleEndian.PutUint64(data[b:], 1<<40+uint64(off+b))
		}
		c, err := d.Append(seq, off, data)
		if err != nil {
			t.Fatal(err)
		}
		commits = append(commits, c)
		copy(model[off:], data)
	}
	for i := range 40000 {
		seq++
		blk := rng.Int64N(size / bs)
		data := make([]byte, bs)
		binary.LittleEndian.PutUint64(data, seq)
		data[8] = byte(i)
		c, err := d.Append(seq, blk*bs, data)
		if err != nil {
			t.Fatal(err)
		}
		commits = append(commits, c)
		copy(model[blk*bs:], data)
		if i%5000 == 4999 {
			for _, c := range commits {
				if err := c.Wait(ctx); err != nil {
					t.Fatal(err)
				}
			}
			commits = commits[:0]
			seq++
			if err := d.Barrier(ctx, seq, CrashConsistent); err != nil {
				t.Fatal(err)
			}
			sn, err := d.Snapshot(ctx, SnapshotOptions{Seq: seq})
			if err != nil {
				t.Fatal(err)
			}
			points = append(points, point{sn.ID, bytes.Clone(model)})
		}
	}
	check := func(what string, r interface {
		ReadAt([]byte, int64) (int, error)
	}, want []byte) {
		got := make([]byte, size)
		if _, err := r.ReadAt(got, 0); err != nil {
			t.Fatalf("%s: read: %v", what, err)
		}
		bad := 0
		for off := 0; off < size; off += bs {
			if !bytes.Equal(got[off:off+bs], want[off:off+bs]) {
				bad++
				if bad <= 3 {
					t.Errorf("%s: block %d holds seq %d, want seq %d", what, off/bs,
						binary.LittleEndian.Uint64(got[off:]), binary.LittleEndian.Uint64(want[off:]))
				}
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d blocks differ", what, bad)
		}
	}
	for _, p := range points {
		r, err := d.OpenSnapshot(ctx, p.id)
		if err != nil {
			t.Fatal(err)
		}
		check("snapshot "+p.id, r, p.model)
		r.Close()
	}
}
