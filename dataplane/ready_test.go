package dataplane_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/track"
)

// TestReadyForTestAtOnce: the end of an initial sync reaches the record
// (READY_FOR_TEST) at once, not at the session's next poll: the agent
// sends its STATS when the sync completes and the server records it when
// it arrives. The poll here is a minute, so only that path can pass.
func TestReadyForTestAtOnce(t *testing.T) {
	h := newHarness(t)
	h.stop()
	h.serveWith(func(dp *dataplane.Server) { dp.PollInterval = time.Minute })
	dir := t.TempDir()
	dev := filepath.Join(dir, "disk0")
	img := make([]byte, 8<<20)
	rand.Read(img[:2<<20])
	if err := os.WriteFile(dev, img, 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	tr := &manualTracker{ch: make(chan []track.Batch, 1)}
	done := h.runAgent(t.Context(), state, dev, tr)
	id := dataplane.DiskID("s-1", "disk0")
	eventually(t, 20*time.Second, "initial sync converges", func() bool { return h.replicaEquals(id, img) })
	synced := time.Now()
	eventually(t, 10*time.Second, "READY_FOR_TEST without waiting for the minute poll", func() bool {
		s, _ := h.st.Server(t.Context(), "s-1")
		return s.Lifecycle == ferry.LifecycleReadyForTest
	})
	t.Logf("READY_FOR_TEST %v after the replica matched", time.Since(synced).Round(time.Millisecond))
	select {
	case err := <-done:
		t.Fatalf("agent ended: %v", err)
	default:
	}
}
