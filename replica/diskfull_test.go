package replica

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestDiskFull fills the staging file system (a 3 MiB tmpfs) until a write
// fails with ErrNoSpace, checks the store is consistent, frees space by
// folding and trimming the journal, and resumes writing.
func TestDiskFull(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mnt := filepath.Join(e.dir, "small")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	e.opts.Dir = filepath.Join(mnt, "staging")
	e.opts.SegmentSize = 256 << 10
	e.opts.Window = Window{MaxBytes: 1, MaxAge: 1}
	s := e.open(t)
	const size = 8 << 20
	d, err := s.CreateDisk(ctx, "d", size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	m := &model{b: make([]byte, size)}
	rng := rand.New(rand.NewPCG(9, 9))
	seq := uint64(0)
	write := func() error {
		// 32 KiB extents: smaller than a chunk, so they go to the
		// journal (whole chunks go straight to the backend).
		data := randData(rng, 32<<10)
		off := int64(rng.IntN(size/(32<<10))) * 32 << 10
		err := d.Write(ctx, seq+1, off, data)
		if err == nil {
			seq++
			m.write(off, data)
		}
		return err
	}
	var full error
	for i := 0; i < 1000 && full == nil; i++ {
		full = write()
	}
	if !errors.Is(full, ErrNoSpace) {
		t.Fatalf("filling the staging file system: %v, want ErrNoSpace", full)
	}
	if got := d.DurableSeq(); got != seq {
		t.Fatalf("DurableSeq = %d after the failed write, want %d", got, seq)
	}
	checkHead(t, d, m.b)
	// Free space: fold everything and trim the journal.
	if err := d.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if err := write(); err != nil {
			t.Fatalf("write after freeing space: %v", err)
		}
	}
	checkHead(t, d, m.b)
	s.Close()
	s = e.open(t)
	defer s.Close()
	d, _ = s.Disk("d")
	checkHead(t, d, m.b)
	if rep, err := s.Verify(ctx); err != nil || !rep.OK() {
		t.Fatalf("Verify = %v, %v", rep.Problems, err)
	}
}
