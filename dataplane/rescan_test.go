package dataplane_test

import (
	"context"
	"crypto/rand"
	mrandv2 "math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/track"
)

// TestRescanSendsChangedBlocks restarts an agent after untracked changes
// and checks that the rescan sends the changed 4 KiB blocks, not the
// 32 KiB blocks it compares first: scattered single blocks, a long run, a
// 16 MiB range where every 32 KiB block changed (more than one round of
// second comparisons holds), a block rewritten with its own bytes, and
// the disk's last block. Tracked writes made while the rescan runs go
// first and end up in the replica too.
func TestRescanSendsChangedBlocks(t *testing.T) {
	h := newHarness(t)
	dir := t.TempDir()
	dev := filepath.Join(dir, "disk0")
	const mib = 1 << 20
	const size = 52*mib + 64<<10 // three and a bit rescan ranges
	img := make([]byte, size)
	rand.Read(img[:20*mib])
	for i := 24 * mib; i < 40*mib; i++ {
		img[i] = byte(i / 4096) // compressible, no zero block
	}
	if err := os.WriteFile(dev, img, 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o700)
	ctx, cancel := context.WithCancel(t.Context())
	done := h.runAgent(ctx, state, dev, &manualTracker{ch: make(chan []track.Batch)})
	id := dataplane.DiskID("s-1", "disk0")
	eventually(t, 60*time.Second, "initial sync converges", func() bool { return h.replicaEquals(id, img) })
	eventually(t, 10*time.Second, "READY_FOR_TEST", func() bool {
		s, _ := h.st.Server(t.Context(), "s-1")
		return s.Lifecycle == ferry.LifecycleReadyForTest
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	changed := 0
	change := func(off int64, n int) {
		t.Helper()
		b := make([]byte, n)
		rand.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(img[off:], b)
		changed += n
	}
	rng := mrand(3)
	for range 150 { // scattered blocks over the whole disk
		change(rng.Int64N(size/4096)*4096, 4096)
	}
	change(5*mib+12288, 300<<10) // a run across 32 KiB blocks
	for off := int64(16 * mib); off < 32*mib; off += 32 << 10 {
		change(off+8192, 4096) // every 32 KiB block of the second range
	}
	change(size-4096, 4096)
	// Its own bytes again: compares equal, sends nothing.
	if _, err := f.WriteAt(img[30*mib:30*mib+4096], 30*mib); err != nil {
		t.Fatal(err)
	}

	before := h.dp.ReceivedBytes()
	tr := &manualTracker{ch: make(chan []track.Batch, 16)}
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	done = h.runAgent(ctx, state, dev, tr)
	// Tracked writes while the rescan runs.
	tracked := 0
	for i := range 4 {
		off := int64(i*13+1) * mib
		b := make([]byte, 8192)
		rand.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(img[off:], b)
		tracked += len(b)
		tr.ch <- []track.Batch{{Device: dev, Extents: []track.Extent{{Offset: off, Length: 8192}}}}
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, 60*time.Second, "rescan done", func() bool {
		s, _ := h.st.Server(t.Context(), "s-1")
		return s.Replication.State == ferry.ReplicationContinuous && s.Disks[0].RescannedBytes == size
	})
	eventually(t, 10*time.Second, "replica matches", func() bool { return h.replicaEquals(id, img) })
	resent := h.dp.ReceivedBytes() - before
	// Random data does not compress: what went is what changed, plus
	// record headers and tracked writes sent twice (once tracked, once
	// found by the rescan).
	if limit := int64(changed+2*tracked) + int64(changed)/20 + 64<<10; resent > limit {
		t.Fatalf("the rescan sent %d bytes for %d changed (limit %d)", resent, changed, limit)
	}
	t.Logf("rescan sent %d bytes for %d changed and %d tracked", resent, changed, tracked)
	cancel()
	<-done
}

func mrand(seed uint64) *mrandv2.Rand { return mrandv2.New(mrandv2.NewPCG(seed, seed)) }
