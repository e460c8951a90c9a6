package replica

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/replica/backend"
)

// stallingGets holds every chunk Get, once armed, until its context ends,
// and a while after: a slow object store under a load that outlives its
// caller's interest.
type stallingGets struct {
	backend.Backend
	armed    atomic.Bool
	entered  chan struct{}
	once     sync.Once
	returned atomic.Bool
}

func (b *stallingGets) Get(ctx context.Context, name string) ([]byte, error) {
	if !b.armed.Load() || !strings.HasPrefix(name, ChunkPrefix) {
		return b.Backend.Get(ctx, name)
	}
	b.once.Do(func() { close(b.entered) })
	<-ctx.Done()
	time.Sleep(50 * time.Millisecond)
	b.returned.Store(true)
	return nil, ctx.Err()
}

// TestCloseWaitsForReadAhead: Close returns only once the chunk loads that
// read-ahead started have ended, since it then closes the sealer and the
// backend they use.
func TestCloseWaitsForReadAhead(t *testing.T) {
	e := newEnv(t)
	slow := &stallingGets{Backend: e.be, entered: make(chan struct{})}
	e.opts.Backend = slow
	s := e.open(t)
	slow.armed.Store(true)
	s.prefetch(Hash{1})
	select {
	case <-slow.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("read-ahead never asked the backend for the chunk")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !slow.returned.Load() {
		t.Fatal("Close returned while a read-ahead was still loading a chunk")
	}
	// After Close, read-ahead starts nothing.
	s.prefetch(Hash{2})
	if n := len(s.readAhead); n != 0 {
		t.Fatalf("%d read-ahead slots taken after Close", n)
	}
}
