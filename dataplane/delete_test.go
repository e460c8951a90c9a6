package dataplane_test

import (
	"errors"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/replica"
)

// TestDeleteReplica deletes a server's replica disks and no other
// server's (s-10's ids start like s-1's), ends the server's live session
// first, refuses a disk an instance is reading, and forgets the server's
// counters once its replica is gone.
func TestDeleteReplica(t *testing.T) {
	h := newHarness(t)
	ctx := t.Context()
	// A live session of s-1 with disk vda.
	c, r := h.hello(t)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if m, err := r.Read(); err != nil || m.Type() != protocol.TypeHelloAck {
		t.Fatalf("HELLO: %v %v", m, err)
	}
	for _, id := range []string{dataplane.DiskID("s-1", "vdb"), dataplane.DiskID("s-10", "vda")} {
		if _, err := h.rs.CreateDisk(ctx, id, 1<<20, 4096); err != nil {
			t.Fatal(err)
		}
	}
	vdb, err := h.rs.Disk(dataplane.DiskID("s-1", "vdb"))
	if err != nil {
		t.Fatal(err)
	}
	reader, err := vdb.OpenHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := h.dp.DeleteReplica(ctx, "s-1")
	if !errors.Is(err, ferry.ErrConflict) || n != 1 {
		t.Fatalf("delete with a disk being read: %d, %v; want 1 deleted and ErrConflict", n, err)
	}
	// The session was ended before anything was deleted.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, err := r.Read(); err != nil {
			break
		}
	}
	reader.Close()
	if !dataplane.HasTraffic(h.dp, "s-1") {
		t.Fatal("no traffic counters for s-1 after its session")
	}
	if n, err := h.dp.DeleteReplica(ctx, "s-1"); err != nil || n != 1 {
		t.Fatalf("delete again: %d, %v; want the last disk deleted", n, err)
	}
	for _, id := range []string{dataplane.DiskID("s-1", "vda"), dataplane.DiskID("s-1", "vdb")} {
		if _, err := h.rs.Disk(id); !errors.Is(err, replica.ErrNotFound) {
			t.Errorf("disk %s after the delete: %v", id, err)
		}
	}
	if _, err := h.rs.Disk(dataplane.DiskID("s-10", "vda")); err != nil {
		t.Errorf("another server's disk went too: %v", err)
	}
	if dataplane.HasTraffic(h.dp, "s-1") || dataplane.DropsLogged(h.dp, "s-1") != 0 {
		t.Error("the server's traffic counters or drop log outlived its replica")
	}
	if n, err := h.dp.DeleteReplica(ctx, "s-1"); err != nil || n != 0 {
		t.Fatalf("delete with nothing left: %d, %v", n, err)
	}
}
