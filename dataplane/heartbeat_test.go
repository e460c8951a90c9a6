package dataplane_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/protocol"
)

// slowStore makes every UpdateServer wait while gate is set, as a metadata
// store shared by thousands of sessions does under load.
type slowStore struct {
	ferry.Store
	gate    atomic.Bool
	release chan struct{}
}

func (s *slowStore) UpdateServer(ctx context.Context, id string, fn func(*ferry.SourceServer) error) (*ferry.SourceServer, error) {
	if s.gate.Load() {
		select {
		case <-s.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Store.UpdateServer(ctx, id, fn)
}

// Heartbeats keep coming while the session's record update waits on the
// metadata store: a slow store must not end agents' sessions by their read
// timeout (it did at 10,000 agents).
func TestHeartbeatsDoNotWaitForTheStore(t *testing.T) {
	h := newHarness(t)
	slow := &slowStore{Store: h.st, release: make(chan struct{})}
	h.stop()
	h.st = slow
	h.serve()
	t.Cleanup(func() { close(slow.release) })

	c, r := h.hello(t)
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if m, err := r.Read(); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(*protocol.HelloAck); !ok {
		t.Fatalf("first message is %s, want HELLO_ACK", m.Type())
	}
	slow.gate.Store(true)
	// Two heartbeat periods with every record update blocked.
	beats := 0
	deadline := time.Now().Add(11 * time.Second)
	for time.Now().Before(deadline) {
		_ = c.SetReadDeadline(deadline)
		m, err := r.Read()
		if err != nil {
			break
		}
		if _, ok := m.(*protocol.Heartbeat); ok {
			beats++
		}
	}
	if beats < 2 {
		t.Fatalf("%d heartbeats in 11 s with the store blocked; want at least 2 (one every 5 s)", beats)
	}
}
