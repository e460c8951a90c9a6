package replica

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// Many disks share a small budget of open segments: idle ones are closed
// and opened again when a write or a read needs them, and nothing reads
// differently for it.
func TestSegmentFilesBounded(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.opts.MaxOpenSegments = 3
	e.opts.SegmentSize = 256 << 10
	s := e.open(t)
	const disks, size = 12, 2 << 20
	rng := rand.New(rand.NewPCG(7, 8))
	var ds []*Disk
	var ms []*model
	for i := range disks {
		d, err := s.CreateDisk(ctx, fmt.Sprintf("disk-%d", i), size, 4096)
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
		ms = append(ms, &model{b: make([]byte, size)})
	}
	seq := make([]uint64, disks)
	for round := range 40 {
		for i, d := range ds {
			seq[i]++
			off := int64(rng.IntN(size/4096-8)) * 4096
			data := randData(rng, 4096*(1+rng.IntN(8)))
			if err := d.Write(ctx, seq[i], off, data); err != nil {
				t.Fatalf("round %d disk %d: %v", round, i, err)
			}
			ms[i].write(off, data)
			if open, _ := s.files.stats(); open > 3 {
				t.Fatalf("round %d: %d segments open, budget 3", round, open)
			}
		}
	}
	for i, d := range ds {
		if len(d.j.segs) < 2 {
			t.Fatalf("disk %d has %d segments; the test wants several", i, len(d.j.segs))
		}
		checkHead(t, d, ms[i].b)
	}
	if _, reopened := s.files.stats(); reopened == 0 {
		t.Fatal("no segment was opened again: the budget did not bind")
	}
	rep, err := s.Verify(ctx)
	if err != nil || !rep.OK() {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if open, _ := s.files.stats(); open != 0 {
		t.Errorf("%d segments open after Close", open)
	}
	s = e.open(t)
	defer s.Close()
	if open, _ := s.files.stats(); open > 3 {
		t.Errorf("%d segments open after replay, budget 3", open)
	}
	for i := range ds {
		d, err := s.Disk(fmt.Sprintf("disk-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		checkHead(t, d, ms[i].b)
	}
}

// A reader keeps the segments it reads from even when the journal's trim
// unlinks them and the budget would close them: it reads what it opened.
func TestTrimmedSegmentStaysReadable(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.opts.MaxOpenSegments = 1
	e.opts.SegmentSize = 1 // one segment per group commit
	s := e.open(t)
	defer s.Close()
	const size = 1 << 20
	d, err := s.CreateDisk(ctx, "d", size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 10))
	m := &model{b: make([]byte, size)}
	for seq := uint64(1); seq <= 6; seq++ {
		data := randData(rng, 8192)
		off := int64(seq) * 3 * 4096
		if err := d.Write(ctx, seq, off, data); err != nil {
			t.Fatal(err)
		}
		m.write(off, data)
	}
	r, err := d.OpenHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(m.b)
	// Later writes, a fold and a window of nothing: the old segments go.
	e.opts.Window = Window{MaxBytes: 1, MaxAge: time.Nanosecond}
	s.opts.Window = e.opts.Window
	for seq := uint64(7); seq <= 9; seq++ {
		if err := d.Write(ctx, seq, 0, randData(rng, 4096)); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(d.j.segs); n > 2 {
		t.Fatalf("%d segments after the trim; want the old ones removed", n)
	}
	if got := readAll(t, r); !bytes.Equal(got, want) {
		t.Fatalf("reader over trimmed segments differs at %d", firstDiff(got, want))
	}
	r.Close()
	if open, _ := s.files.stats(); open > 1 {
		t.Errorf("%d segments open after the reader closed, budget 1", open)
	}
}
