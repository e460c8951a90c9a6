package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestGCWhileLive runs GC in a loop while a disk takes writes (whole
// chunks, many of them repeating content GC may be deleting at that
// moment, small writes and zeros), background folds and journal trims,
// snapshots and snapshot deletes, and while other snapshots are read:
// what a server that garbage-collects online does. Every read, the head
// and every live snapshot must match the model throughout and after a
// reopen, and Verify must find nothing wrong.
func TestGCWhileLive(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	// One segment per group commit and a tiny window, so that folds trim
	// the journal at once and its chunks become garbage while the same
	// content is being written again.
	e.opts.SegmentSize = 1
	e.opts.Window = Window{MaxBytes: 1, MaxAge: time.Nanosecond}
	e.opts.FoldInterval = 5 * time.Millisecond
	s := e.open(t)
	cs := int(e.opts.ChunkSize)
	const chunks = 32
	size := int64(chunks * cs)
	d, err := s.CreateDisk(ctx, "d", size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(11, 12))
	// A few contents written again and again: each time GC may have
	// found the previous copy unreferenced.
	pool := make([][]byte, 6)
	for i := range pool {
		pool[i] = randData(rng, cs)
	}
	m := &model{b: make([]byte, size)}

	var (
		mu     sync.Mutex
		pinned = map[string][]byte{} // never deleted: read concurrently
		others []SnapshotInfo        // deleted again while GC runs
		want   = map[string][]byte{}
	)
	done := make(chan struct{})
	var gcRuns, reads atomic.Int64
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := s.GC(ctx); err != nil {
				errc <- fmt.Errorf("GC: %w", err)
				return
			}
			gcRuns.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, size)
		for {
			select {
			case <-done:
				return
			default:
			}
			mu.Lock()
			var id string
			var exp []byte
			for k, v := range pinned {
				id, exp = k, v
				break
			}
			mu.Unlock()
			if id == "" {
				time.Sleep(time.Millisecond)
				continue
			}
			if err := readEquals(ctx, d, id, buf, exp); err != nil {
				errc <- fmt.Errorf("concurrent read: %w", err)
				return
			}
			reads.Add(1)
		}
	}()

	seq := uint64(0)
	var last Commit
	for i := 0; i < 1500; i++ {
		seq++
		var err error
		switch k := rng.IntN(10); {
		case k < 6: // a whole chunk, often repeated content
			off := int64(rng.IntN(chunks)) * int64(cs)
			data := pool[rng.IntN(len(pool))]
			if k == 5 {
				data = randData(rng, cs)
			}
			last, err = d.Append(seq, off, data)
			m.write(off, data)
		case k < 9: // small writes inside a chunk
			off := int64(rng.IntN(int(size)/4096)) * 4096
			n := min(int64(4096*(1+rng.IntN(4))), size-off)
			data := randData(rng, int(n))
			last, err = d.Append(seq, off, data)
			m.write(off, data)
		default:
			off := int64(rng.IntN(chunks)) * int64(cs)
			last, err = d.AppendZeroes(seq, off, int64(cs))
			m.zero(off, int64(cs))
		}
		if err != nil {
			t.Fatalf("write %d: %v", seq, err)
		}
		if i%50 == 49 {
			seq++
			if err := d.Barrier(ctx, seq, CrashConsistent); err != nil {
				t.Fatal(err)
			}
			sn, err := d.Snapshot(ctx, SnapshotOptions{Consistency: CrashConsistent})
			if err != nil {
				t.Fatalf("snapshot at %d: %v", seq, err)
			}
			img := bytes.Clone(m.b)
			mu.Lock()
			want[sn.ID] = img
			if len(pinned) < 3 {
				pinned[sn.ID] = img
			} else {
				others = append(others, sn)
			}
			var del []SnapshotInfo
			if len(others) > 3 {
				del, others = others[:1], others[1:]
			}
			mu.Unlock()
			for _, sn := range del {
				if err := d.DeleteSnapshot(ctx, sn.ID); err != nil {
					t.Fatalf("delete snapshot %s: %v", sn.ID, err)
				}
				mu.Lock()
				delete(want, sn.ID)
				mu.Unlock()
			}
		}
		select {
		case err := <-errc:
			t.Fatal(err)
		default:
		}
	}
	if err := last.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	close(done)
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	t.Logf("%d GC runs and %d snapshot reads during %d writes", gcRuns.Load(), reads.Load(), seq)
	if gcRuns.Load() < 3 {
		t.Fatalf("only %d GC runs overlapped the writes", gcRuns.Load())
	}
	check := func(s *Store, when string) {
		t.Helper()
		d, err := s.Disk("d")
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, size)
		for id, exp := range want {
			if err := readEquals(ctx, d, id, buf, exp); err != nil {
				t.Fatalf("%s: %v", when, err)
			}
		}
		r, err := d.OpenHead(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if _, err := r.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("%s: read head: %v", when, err)
		}
		if !bytes.Equal(buf, m.b) {
			t.Fatalf("%s: the head differs from what was written", when)
		}
		rep, err := s.Verify(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Problems) > 0 {
			t.Fatalf("%s: verify: %v", when, rep.Problems)
		}
	}
	if err := d.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	check(s, "after the run")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = e.open(t)
	defer s.Close()
	check(s, "after a reopen")
}

// readEquals reads snapshot id of d whole into buf and compares it with want.
func readEquals(ctx context.Context, d *Disk, id string, buf, want []byte) error {
	r, err := d.OpenSnapshot(ctx, id)
	if err != nil {
		return fmt.Errorf("open snapshot %s: %w", id, err)
	}
	defer r.Close()
	if _, err := r.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read snapshot %s: %w", id, err)
	}
	if !bytes.Equal(buf, want) {
		return fmt.Errorf("snapshot %s differs from what was written before it", id)
	}
	return nil
}
