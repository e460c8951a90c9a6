package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/sqlite"
)

// BenchmarkConcurrentUpdateServer models many agent sessions refreshing
// their server records at once: 64 goroutines per GOMAXPROCS each update
// one of 1,000 servers, so the single writer's commits are the bottleneck.
func BenchmarkConcurrentUpdateServer(b *testing.B) {
	const nServers = 1000
	s, err := sqlite.Open(filepath.Join(b.TempDir(), "ferry.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for i := range nServers {
		srv := &ferry.SourceServer{ID: fmt.Sprintf("s%04d", i), Hostname: fmt.Sprintf("h%04d", i),
			Disks: []ferry.Disk{{Name: "vda", SizeBytes: 20 << 30}}}
		if err := s.CreateServer(ctx, srv); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	b.SetParallelism(64)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("s%04d", next.Add(1)%nServers)
			if _, err := s.UpdateServer(ctx, id, func(v *ferry.SourceServer) error {
				v.Disks[0].SentBytes += 4096
				return nil
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "updates/s")
}

// BenchmarkUpdateServer is one caller updating one server after another:
// every write is a group of one, which takes the writer's fast path.
func BenchmarkUpdateServer(b *testing.B) {
	s, err := sqlite.Open(filepath.Join(b.TempDir(), "ferry.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.CreateServer(ctx, &ferry.SourceServer{ID: "s", Disks: []ferry.Disk{{Name: "vda"}}}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.UpdateServer(ctx, "s", func(v *ferry.SourceServer) error {
			v.Disks[0].SentBytes += 4096
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}
