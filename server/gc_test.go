package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/replica/fs"
)

// TestRunGC checks the server's GC loop: a deleted snapshot's chunk is
// freed by a run on the interval, without a stop, the run is reported,
// and the loop ends with its context.
func TestRunGC(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	b, err := fs.Open(filepath.Join(dir, "objects"), fs.Packed(replica.ChunkPrefix))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := replica.CreateKeyFile(filepath.Join(dir, "key"))
	if err != nil {
		t.Fatal(err)
	}
	// One segment per commit and no journal window: folded records leave
	// the journal at once, so only maps keep chunks alive.
	st, err := replica.Open(ctx, replica.Options{Dir: filepath.Join(dir, "staging"), Backend: b, CloseBackend: true, Keys: keys,
		ChunkSize: 64 << 10, FoldInterval: -1, SegmentSize: 1, Window: replica.Window{MaxBytes: 1, MaxAge: time.Nanosecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d, err := st.CreateDisk(ctx, "s-1.sda", 1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	write := func(seq uint64) []byte {
		data := make([]byte, 64<<10)
		rand.Read(data)
		if err := d.Write(ctx, seq, 0, data); err != nil {
			t.Fatal(err)
		}
		if err := d.Barrier(ctx, seq+1, replica.CrashConsistent); err != nil {
			t.Fatal(err)
		}
		if err := d.Fold(ctx); err != nil {
			t.Fatal(err)
		}
		return data
	}
	write(1)
	old, err := d.Snapshot(ctx, replica.SnapshotOptions{Consistency: replica.CrashConsistent})
	if err != nil {
		t.Fatal(err)
	}
	now := write(3)
	if err := d.DeleteSnapshot(ctx, old.ID); err != nil {
		t.Fatal(err)
	}
	if err := d.Fold(ctx); err != nil {
		t.Fatal(err)
	}

	type run struct {
		s   replica.GCStats
		err error
	}
	runs := make(chan run, 16)
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		runGC(gctx, st, 20*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)), func(_ time.Time, _ time.Duration, s replica.GCStats, err error) {
			runs <- run{s, err}
		})
	}()
	var freed int64
	deadline := time.After(10 * time.Second)
	for freed == 0 {
		select {
		case r := <-runs:
			if r.err != nil {
				t.Fatalf("gc run: %v", r.err)
			}
			freed += r.s.FreedBytes
		case <-deadline:
			t.Fatal("no GC run freed the deleted snapshot's chunk within 10 s")
		}
	}
	cancel()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the GC loop did not end with its context")
	}
	// What is still referenced is intact.
	r, err := d.OpenHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make([]byte, len(now))
	if _, err := r.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, now) {
		t.Fatal("the head changed under GC")
	}
	rep, err := st.Verify(ctx)
	if err != nil || len(rep.Problems) > 0 || rep.Unreferenced != 0 {
		t.Fatalf("verify after GC: %+v, %v", rep, err)
	}
}
