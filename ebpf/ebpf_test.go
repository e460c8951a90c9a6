package ebpf

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/track"
	"github.com/ferrymigrate/ferry/track/tracktest"
)

// newTracker starts an eBPF tracker, failing (not skipping) when it cannot
// load: the tests run as root on a kernel with BTF.
func newTracker(t *testing.T, devices []string, opts ...Option) *Tracker {
	t.Helper()
	tracktest.RequireRoot(t)
	tr, err := New(devices, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tr
}

func TestConformance(t *testing.T) {
	tracktest.Suite(t, func(t *testing.T, devices []string) track.Tracker {
		return newTracker(t, devices)
	})
}

// TestExactExtents checks that the tracker reports exactly the written
// ranges, aligned to the 512-byte logical blocks of a loop device.
func TestExactExtents(t *testing.T) {
	dev := tracktest.Loop(t, 64<<20, false)
	tr := newTracker(t, []string{dev})
	defer tr.Close()
	if tr.Kind() != "ebpf" {
		t.Errorf("Kind = %q", tr.Kind())
	}
	writes := []struct{ off, length, bs int64 }{
		{4096, 8192, 0},
		{1 << 20, 512, 0},
		{10<<20 + 1536, 1536, 512}, // three requests that coalesce
		{20 << 20, 4 << 20, 0},     // split by max_sectors_kb, coalesced
		{20<<20 + 4<<20, 4096, 0},  // adjacent to the previous one
	}
	want := []track.Extent{{Offset: 4096, Length: 8192}, {Offset: 1 << 20, Length: 512},
		{Offset: 10<<20 + 1536, Length: 1536}, {Offset: 20 << 20, Length: 4<<20 + 4096}}
	for _, w := range writes {
		tracktest.Write(t, dev, w.off, w.length, w.bs)
	}
	ext, lost := tracktest.Collect(t, tr, 5*time.Second, func(got map[string][]track.Extent) bool {
		return tracktest.String(got[dev]) == tracktest.String(want)
	})
	if got := tracktest.String(ext[dev]); got != tracktest.String(want) {
		t.Errorf("got %s, want %s", got, tracktest.String(want))
	}
	if lost[dev] {
		t.Errorf("Lost without overflow")
	}
}

// TestOverflowIsLost fills a one-page ring while its reader is held: the
// lost events must show as Lost, never as a silent gap.
func TestOverflowIsLost(t *testing.T) {
	dev, other := tracktest.Loop(t, 64<<20, false), tracktest.Loop(t, 64<<20, false)
	hold := make(chan struct{})
	tr := newTracker(t, []string{dev, other}, WithRingSize(4096), func(o *options) { o.hold = hold })
	defer tr.Close()
	// 1000 requests of 4 KiB: 24 bytes each in the ring, which holds ~170.
	tracktest.Write(t, dev, 0, 1000*4096, 4096)
	close(hold)
	ext, lost := tracktest.Collect(t, tr, time.Second, nil)
	if !lost[dev] {
		t.Errorf("%s: overflowed ring not reported as Lost (extents %s)", dev, tracktest.String(ext[dev]))
	}
	if lost[other] {
		t.Errorf("%s: Lost though nothing was written to it", other)
	}
	if !tracktest.Covers(ext[dev], 0, 4096) {
		t.Errorf("the events that fit were not reported: %s", tracktest.String(ext[dev]))
	}
	// After the Lost batch, tracking goes on.
	tracktest.Write(t, dev, 32<<20, 4096, 0)
	ext, lost = tracktest.Collect(t, tr, 5*time.Second, func(got map[string][]track.Extent) bool {
		return tracktest.Covers(got[dev], 32<<20, 4096)
	})
	if !tracktest.Covers(ext[dev], 32<<20, 4096) || lost[dev] {
		t.Errorf("after overflow: extents %s lost %v, want [%d+4096] and not lost", tracktest.String(ext[dev]), lost[dev], 32<<20)
	}
}

// TestPartition tracks a partition of a loop device: completions name the
// whole disk with absolute sectors, and the tracker reports offsets
// relative to the partition, only for writes inside it.
func TestPartition(t *testing.T) {
	disk := tracktest.Loop(t, 64<<20, true)
	part := tracktest.Partition(t, disk)
	tr := newTracker(t, []string{part})
	defer tr.Close()
	tracktest.Write(t, disk, 4096, 4096, 0) // the partition table area: not the partition
	tracktest.Write(t, part, 8192, 4096, 0) // disk offset 1 MiB + 8 KiB
	want := []track.Extent{{Offset: 8192, Length: 4096}}
	ext, _ := tracktest.Collect(t, tr, 5*time.Second, func(got map[string][]track.Extent) bool {
		return tracktest.String(got[part]) == tracktest.String(want)
	})
	if got := tracktest.String(ext[part]); got != tracktest.String(want) {
		t.Errorf("got %s, want %s", got, tracktest.String(want))
	}
	if _, ok := ext[disk]; ok {
		t.Errorf("untracked whole disk reported: %s", tracktest.String(ext[disk]))
	}
}

func TestNewErrors(t *testing.T) {
	tracktest.RequireRoot(t)
	if _, err := New(nil); err == nil {
		t.Error("New(nil) succeeded")
	}
	if _, err := New([]string{"/dev/null"}); err == nil || errors.Is(err, ErrUnsupported) {
		t.Errorf("New(/dev/null) = %v, want a device error", err)
	}
}

// TestBioBased checks that a bio-based device (zram here), for which the
// tracepoint never fires, is refused with ErrUnsupported rather than
// tracked silently.
func TestBioBased(t *testing.T) {
	tracktest.RequireRoot(t)
	if _, err := os.Stat("/sys/block/zram0"); err != nil {
		t.Skip("SKIPPED: no zram0 to stand for a bio-based device")
	}
	dev := "/dev/zram0"
	if _, err := os.Stat(dev); err != nil {
		dev = tracktest.Node(t, "zram0")
	}
	_, err := New([]string{dev})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("New(%s) = %v, want an error wrapping ErrUnsupported", dev, err)
	}
}

func TestAuto(t *testing.T) {
	dev := tracktest.Loop(t, 16<<20, false)
	tr, err := Auto([]string{dev}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.Kind() != "ebpf" {
		t.Errorf("Auto as root chose %q, want ebpf", tr.Kind())
	}
}

// TestDiscardAndZeroes checks that discards and write-zeroes requests,
// which change what a read returns, are reported like writes.
func TestDiscardAndZeroes(t *testing.T) {
	dev := tracktest.Loop(t, 64<<20, false)
	tr := newTracker(t, []string{dev})
	defer tr.Close()
	tracktest.Run(t, "blkdiscard", "-o", "8388608", "-l", "1048576", dev)
	tracktest.Run(t, "blkdiscard", "-z", "-o", "16777216", "-l", "65536", dev)
	want := []track.Extent{{Offset: 8 << 20, Length: 1 << 20}, {Offset: 16 << 20, Length: 64 << 10}}
	ext, _ := tracktest.Collect(t, tr, 5*time.Second, func(got map[string][]track.Extent) bool {
		return tracktest.String(got[dev]) == tracktest.String(want)
	})
	if got := tracktest.String(ext[dev]); got != tracktest.String(want) {
		t.Errorf("got %s, want %s", got, tracktest.String(want))
	}
}

// TestSync checks that Sync vouches for every write completed before it:
// after each write, once the consumer has applied as many batches as Sync
// named, the write is in them. Without the wait the check would race the
// ring reader; with a held reader Sync must not vouch at all.
func TestSync(t *testing.T) {
	dev := tracktest.Loop(t, 64<<20, false)
	hold := make(chan struct{})
	tr := newTracker(t, []string{dev}, func(o *options) { o.hold = hold })
	defer tr.Close()

	tracktest.Write(t, dev, 0, 4096, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := tr.Sync(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sync with the ring reader held = %v, want a deadline error", err)
	}
	close(hold)

	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		applied uint64
		got     []track.Extent
	)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		for {
			b, err := tr.Next(ctx)
			if err != nil {
				return
			}
			mu.Lock()
			for _, x := range b {
				got = append(got, x.Extents...)
			}
			applied++
			cond.Broadcast()
			mu.Unlock()
		}
	}()
	// Busy goroutines delay the reader, as a loaded machine does.
	for range 2 {
		go func() {
			for ctx.Err() == nil {
			}
		}()
	}
	for i := range int64(200) {
		off := (i + 1) * 8192
		tracktest.Write(t, dev, off, 4096, 0)
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		n, err := tr.Sync(sctx)
		cancel()
		if err != nil {
			t.Fatalf("write %d: Sync: %v", i, err)
		}
		mu.Lock()
		for applied < n {
			cond.Wait()
		}
		ok := tracktest.Covers(got, off, 4096)
		mu.Unlock()
		if !ok {
			t.Fatalf("write %d at %d: not in the batches Sync vouched for (%d applied)", i, off, n)
		}
	}
}

// TestConcurrentWritesAllSeen writes random 4 KiB blocks from several
// goroutines with O_DIRECT, as a busy source does, and checks that every
// written block is in the batches Sync vouches for (or that the tracker
// said Lost): a missed event is a silent gap in the replica.
func TestConcurrentWritesAllSeen(t *testing.T) {
	const size, bs, writers, perWriter = 512 << 20, 4096, 4, 40000
	dev := tracktest.Loop(t, size, false)
	tr := newTracker(t, []string{dev})
	defer tr.Close()
	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		applied uint64
		seen    = make([]bool, size/bs)
		lost    bool
	)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		for {
			b, err := tr.Next(ctx)
			if err != nil {
				return
			}
			mu.Lock()
			for _, x := range b {
				lost = lost || x.Lost
				for _, e := range x.Extents {
					for o := e.Offset / bs; o < (e.Offset+e.Length+bs-1)/bs; o++ {
						seen[o] = true
					}
				}
			}
			applied++
			cond.Broadcast()
			mu.Unlock()
		}
	}()
	written := make([][]int64, writers)
	var wg sync.WaitGroup
	// Readers beside the writers, as the agent reads what it ships: with
	// them, the completion tracepoint has been seen to miss a write.
	rctx, rstop := context.WithCancel(context.Background())
	defer rstop()
	for r := range 2 {
		go func() {
			f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
			if err != nil {
				return
			}
			defer f.Close()
			buf, err := syscall.Mmap(-1, 0, 1<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
			if err != nil {
				return
			}
			defer syscall.Munmap(buf)
			rng := rand.New(rand.NewPCG(uint64(r), 9))
			for rctx.Err() == nil {
				_, _ = f.ReadAt(buf[:bs*(1+rng.IntN(256))], rng.Int64N(size/bs-256)*bs)
			}
		}()
	}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_DIRECT, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			buf, err := syscall.Mmap(-1, 0, bs, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
			if err != nil {
				t.Error(err)
				return
			}
			defer syscall.Munmap(buf)
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range perWriter {
				blk := rng.Int64N(size/bs/writers)*writers + int64(w)
				buf[0] = byte(i)
				if _, err := f.WriteAt(buf, blk*bs); err != nil {
					t.Error(err)
					return
				}
				written[w] = append(written[w], blk)
			}
		}()
	}
	wg.Wait()
	rstop()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	n, err := tr.Sync(sctx)
	cancel()
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	mu.Lock()
	for applied < n {
		cond.Wait()
	}
	defer mu.Unlock()
	if lost {
		t.Logf("the tracker reported Lost (ring overflow): the agent would rescan")
		return
	}
	missed := 0
	for _, ws := range written {
		for _, blk := range ws {
			if !seen[blk] {
				missed++
				if missed <= 5 {
					t.Errorf("block %d (offset %d) written but never reported", blk, blk*bs)
				}
			}
		}
	}
	if missed > 0 {
		t.Errorf("%d of %d writes never reported", missed, writers*perWriter)
	}
}

// TestSyncEndsLinger checks that a Sync does not wait out the reader's
// linger: a cutover's drained point would otherwise pay readLinger for
// every disk.
func TestSyncEndsLinger(t *testing.T) {
	dev := tracktest.Loop(t, 64<<20, false)
	tr := newTracker(t, []string{dev})
	defer tr.Close()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		for {
			if _, err := tr.Next(ctx); err != nil {
				return
			}
		}
	}()
	const rounds = 20
	var waited time.Duration
	for i := range int64(rounds) {
		tracktest.Write(t, dev, (i+1)*8192, 4096, 0)
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t0 := time.Now()
		_, err := tr.Sync(sctx)
		waited += time.Since(t0)
		cancel()
		if err != nil {
			t.Fatalf("write %d: Sync: %v", i, err)
		}
	}
	if waited > rounds*readLinger/4 {
		t.Fatalf("%d Syncs, each after a write, took %v: they waited for the reader's %v linger", rounds, waited, readLinger)
	}
	t.Logf("%d Syncs took %v", rounds, waited)
}
