package replica

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
)

// A disk folds once FoldBytes are unfolded, without waiting for its timed
// fold; below that it does not fold.
func TestFoldBytesStartsAFold(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.opts.FoldInterval = time.Hour
	e.opts.FoldBytes = 256 << 10
	s := e.open(t)
	defer s.Close()
	d, err := s.CreateDisk(ctx, "d", 4<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	seq := uint64(0)
	rng := rand.New(rand.NewPCG(11, 12))
	write := func(n int) {
		t.Helper()
		for range n {
			seq++
			if err := d.Write(ctx, seq, int64(seq%64)*4096*4, randData(rng, 4096)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// 16 KiB of the 256 KiB threshold.
	write(4)
	time.Sleep(300 * time.Millisecond)
	if h := d.headSeq(); h != 0 {
		t.Fatalf("folded to %d below FoldBytes", h)
	}
	write(70)
	deadline := time.Now().Add(10 * time.Second)
	for d.headSeq() < 60 {
		if time.Now().After(deadline) {
			t.Fatalf("no fold 10 s after %d KiB were unfolded (pending %d, FoldBytes 256 KiB); head %d", 74*4, d.pending.Load()>>10, d.headSeq())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p := d.pending.Load(); p >= e.opts.FoldBytes {
		t.Errorf("pending %d after the fold, want below FoldBytes", p)
	}
}
