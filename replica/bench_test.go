package replica

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sync/semaphore"
)

// Benchmarks; figures and commands are in docs/storage.md. Set
// FERRY_BENCH_DIR to benchmark on a particular file system.

func benchEnv(b *testing.B, chunkSize int) *testEnv {
	e := newEnv(b)
	if dir := os.Getenv("FERRY_BENCH_DIR"); dir != "" {
		d, err := os.MkdirTemp(dir, "bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		e.opts.Dir = filepath.Join(d, "staging")
	}
	e.opts.ChunkSize = chunkSize
	e.opts.SegmentSize = 64 << 20
	return e
}

const benchDiskSize = 4 << 30

// ingest appends n extents from next with at most 256 records and 16 MiB
// in flight, the replication server's bounds for one agent's stream (its
// ack queue and write credit), and returns when all are durable.
func ingest(b *testing.B, d *Disk, n int, next func(i int) (off int64, data []byte)) {
	const records, bytes = 256, 16 << 20
	type inflight struct {
		c    Commit
		size int64
	}
	ctx := context.Background()
	window := make(chan inflight, records)
	credit := semaphore.NewWeighted(bytes)
	done := make(chan error)
	go func() {
		var first error
		for f := range window {
			if first == nil {
				first = f.c.Wait(ctx)
			}
			credit.Release(f.size)
		}
		done <- first
	}()
	seq := d.DurableSeq()
	for i := 0; i < n; i++ {
		off, data := next(i)
		size := min(int64(len(data)), bytes)
		if err := credit.Acquire(ctx, size); err != nil {
			b.Fatal(err)
		}
		seq++
		c, err := d.Append(seq, off, data)
		if err != nil {
			b.Fatal(err)
		}
		window <- inflight{c, size}
	}
	close(window)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func randomBuf(n int) []byte {
	buf := make([]byte, n)
	rand.Read(buf)
	return buf
}

// BenchmarkFileSeqWrite is the file system's own sequential write speed:
// 1 MiB writes to one file, fsync every 64 MiB and at the end.
func BenchmarkFileSeqWrite(b *testing.B) {
	e := benchEnv(b, DefaultChunkSize)
	os.MkdirAll(e.opts.Dir, 0o700)
	f, err := os.Create(filepath.Join(e.opts.Dir, "seq"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := randomBuf(1 << 20)
	b.SetBytes(1 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if i%64 == 63 {
			f.Sync()
		}
	}
	f.Sync()
}

func BenchmarkIngest(b *testing.B) {
	rnd := randomBuf(64 << 20)
	zeros := make([]byte, 1<<20)
	cases := []struct {
		name string
		size int
		next func(i int, rng *mrand.Rand) (int64, []byte)
	}{
		{"Seq1MiBRandom", 1 << 20, func(i int, _ *mrand.Rand) (int64, []byte) {
			off := int64(i) << 20 % benchDiskSize
			return off, rnd[off%int64(len(rnd)) : off%int64(len(rnd))+1<<20]
		}},
		{"Seq1MiBZeros", 1 << 20, func(i int, _ *mrand.Rand) (int64, []byte) {
			return int64(i) << 20 % benchDiskSize, zeros
		}},
		{"Random4KiB", 4096, func(i int, rng *mrand.Rand) (int64, []byte) {
			p := rng.IntN(len(rnd)/4096) * 4096
			return rng.Int64N(benchDiskSize/4096) * 4096, rnd[p : p+4096]
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			e := benchEnv(b, DefaultChunkSize)
			e.opts.FoldInterval = -1
			s := e.open(b)
			defer s.Close()
			d, err := s.CreateDisk(context.Background(), "d", benchDiskSize, 4096)
			if err != nil {
				b.Fatal(err)
			}
			rng := mrand.New(mrand.NewPCG(1, 2))
			b.SetBytes(int64(tc.size))
			b.ResetTimer()
			ingest(b, d, b.N, func(i int) (int64, []byte) { return tc.next(i, rng) })
		})
	}
}

// BenchmarkFold measures folding (read journal, hash, compress, encrypt,
// store) for several chunk sizes: 64 MiB of sequential 1 MiB random
// extents, or 16 MiB of random 4 KiB extents over a 4 GiB disk.
// Throughput is of journal bytes folded.
func BenchmarkFold(b *testing.B) {
	rnd := randomBuf(64 << 20)
	for _, pattern := range []string{"Seq1MiB", "Random4KiB"} {
		for _, cs := range []int{64 << 10, 256 << 10, 1 << 20, 4 << 20} {
			b.Run(fmt.Sprintf("%s/chunk=%dKiB", pattern, cs>>10), func(b *testing.B) {
				ctx := context.Background()
				var total int64
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					e := benchEnv(b, cs)
					e.opts.FoldInterval = -1
					s := e.open(b)
					d, err := s.CreateDisk(ctx, "d", benchDiskSize, 4096)
					if err != nil {
						b.Fatal(err)
					}
					rng := mrand.New(mrand.NewPCG(uint64(i), 2))
					if pattern == "Seq1MiB" {
						ingest(b, d, 64, func(i int) (int64, []byte) { return int64(i) << 20, rnd[i<<20 : (i+1)<<20] })
						total += 64 << 20
					} else {
						ingest(b, d, 4096, func(int) (int64, []byte) {
							p := rng.IntN(len(rnd)/4096) * 4096
							return rng.Int64N(benchDiskSize/4096) * 4096, rnd[p : p+4096]
						})
						total += 4096 * 4096
					}
					b.StartTimer()
					if err := d.Fold(ctx); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					s.Close()
				}
				b.ReportMetric(float64(total)/b.Elapsed().Seconds()/1e6, "MB/s")
			})
		}
	}
}

// BenchmarkDedup20Copies writes the same 64 MiB image (a mix of random,
// compressible and zero regions) to 20 disks and reports stored bytes of
// all 20 relative to one copy.
func BenchmarkDedup20Copies(b *testing.B) {
	ctx := context.Background()
	img := make([]byte, 64<<20)
	for i := 0; i < len(img); i += 1 << 20 {
		switch (i >> 20) % 4 {
		case 0, 1:
			rand.Read(img[i : i+1<<20])
		case 2:
			for j := i; j < i+1<<20; j++ {
				img[j] = byte(j / 512)
			}
		}
	}
	for i := 0; i < b.N; i++ {
		e := benchEnv(b, DefaultChunkSize)
		e.opts.FoldInterval = -1
		s := e.open(b)
		var one int64
		for k := 0; k < 20; k++ {
			d, err := s.CreateDisk(ctx, fmt.Sprintf("server-%02d", k), int64(len(img)), 4096)
			if err != nil {
				b.Fatal(err)
			}
			ingest(b, d, len(img)>>20, func(i int) (int64, []byte) { return int64(i) << 20, img[i<<20 : (i+1)<<20] })
			if err := d.Fold(ctx); err != nil {
				b.Fatal(err)
			}
			if k == 0 {
				u, err := s.Usage(ctx)
				if err != nil {
					b.Fatal(err)
				}
				one = u.StoredBytes
			}
		}
		u, err := s.Usage(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(u.StoredBytes)/float64(one), "stored/one-copy")
		b.ReportMetric(float64(one)/float64(len(img)), "one-copy/logical")
		s.Close()
	}
}

// BenchmarkFoldScattered is the incremental case: a 1 GiB disk whose
// chunks already hold data (folded once), then 1 % of its 4 KiB blocks
// rewritten at random, and the fold of those changes timed, the work a
// drained snapshot does after an incremental sync (delta chunks).
func BenchmarkFoldScattered(b *testing.B) {
	const size = 1 << 30
	rnd := randomBuf(64 << 20)
	ctx := context.Background()
	var total int64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := benchEnv(b, 1<<20)
		e.opts.FoldInterval = -1
		s := e.open(b)
		d, err := s.CreateDisk(ctx, "d", size, 4096)
		if err != nil {
			b.Fatal(err)
		}
		ingest(b, d, size>>20, func(i int) (int64, []byte) {
			p := (i % 64) << 20
			return int64(i) << 20, rnd[p : p+1<<20]
		})
		if err := d.Fold(ctx); err != nil {
			b.Fatal(err)
		}
		rng := mrand.New(mrand.NewPCG(uint64(i), 3))
		const changed = size / 4096 / 100
		ingest(b, d, changed, func(int) (int64, []byte) {
			p := rng.IntN(len(rnd)/4096) * 4096
			return rng.Int64N(size/4096) * 4096, rnd[p : p+4096]
		})
		b.StartTimer()
		if err := d.Fold(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		total += changed * 4096
		s.Close()
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds()/1e6, "MB/s")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/fold")
}

// BenchmarkSnapshotRead reads a folded 256 MiB snapshot of incompressible
// data from the fs backend the way qemu-img convert reads an NBD export:
// 2 MiB reads in order, depth of them in flight. Each chunk is read from
// its pack, decrypted and hash-checked: the disk is four times the
// default 64 MiB cache, so an in-order pass finds nothing cached.
func BenchmarkSnapshotRead(b *testing.B) {
	const size = 256 << 20
	rnd := randomBuf(size)
	for _, depth := range []int{1, 8} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			ctx := context.Background()
			e := benchEnv(b, DefaultChunkSize)
			e.opts.FoldInterval = -1
			s := e.open(b)
			defer s.Close()
			d, err := s.CreateDisk(ctx, "d", size, 4096)
			if err != nil {
				b.Fatal(err)
			}
			ingest(b, d, size>>20, func(i int) (int64, []byte) { return int64(i) << 20, rnd[i<<20 : (i+1)<<20] })
			snap, err := d.Snapshot(ctx, SnapshotOptions{Consistency: Inconsistent})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(size)
			for b.Loop() {
				b.StopTimer()
				r, err := d.OpenSnapshot(ctx, snap.ID)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				readParallel(b, r, depth)
				b.StopTimer()
				r.Close()
				b.StartTimer()
			}
		})
	}
}

// readParallel reads r in 2 MiB requests handed out in order to depth readers.
func readParallel(b *testing.B, r *Reader, depth int) {
	const req = 2 << 20
	next := make(chan int64)
	errs := make(chan error, depth)
	for range depth {
		go func() {
			buf := make([]byte, req)
			for off := range next {
				if _, err := r.ReadAt(buf, off); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for off := int64(0); off < r.Size(); off += req {
		next <- off
	}
	close(next)
	for range depth {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
}
