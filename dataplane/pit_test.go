package dataplane_test

import (
	"bytes"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/replica"
)

// TestPointInTime drives the point-in-time schedule with a manual clock
// over two hours of a disk that changes every five minutes: a snapshot
// every policy interval, none in between, retention by the server's own
// policy (kept in the metadata store), the snapshot of a live launched
// instance never deleted, and a disk with no consistent point skipped.
func TestPointInTime(t *testing.T) {
	h := newHarness(t)
	ctx := t.Context()
	var mu sync.Mutex
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	h.dp.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	const size = 1 << 20
	d, err := h.rs.CreateDisk(ctx, dataplane.DiskID("s-1", "sda"), size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	// A second disk that never reaches a barrier: nothing to snapshot.
	if _, err := h.rs.CreateDisk(ctx, dataplane.DiskID("s-1", "sdb"), size, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error {
		s.Lifecycle = ferry.LifecycleReadyForTest
		s.Disks = []ferry.Disk{{Name: "sda", SizeBytes: size}, {Name: "sdb", SizeBytes: size}}
		s.ReplicationSetup.PointInTime = []ferry.RetentionRule{{IntervalMinutes: 10, KeepMinutes: 60}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	seq := uint64(0)
	change := func(b byte) {
		seq++
		if err := d.Write(ctx, seq, 0, bytes.Repeat([]byte{b}, 4096)); err != nil {
			t.Fatal(err)
		}
		seq++
		if err := d.Barrier(ctx, seq, replica.CrashConsistent); err != nil {
			t.Fatal(err)
		}
	}
	pass := func(wantTaken int) dataplane.PointInTimeResult {
		t.Helper()
		res, err := h.dp.PointInTime(ctx)
		if err != nil {
			t.Fatalf("PointInTime at %s: %v", now.Format("15:04"), err)
		}
		if res.Taken != wantTaken {
			t.Fatalf("PointInTime at %s took %d snapshots, want %d", now.Format("15:04"), res.Taken, wantTaken)
		}
		return res
	}

	change(1)
	pass(1)
	first := d.Snapshots()[0]
	if !first.Time.Equal(now) {
		t.Errorf("snapshot time %s, want the scheduler's clock %s", first.Time, now)
	}
	srv, err := h.st.Server(ctx, "s-1")
	if err != nil || !srv.Replication.LastSnapshotAt.Equal(now) {
		t.Errorf("LastSnapshotAt = %v (%v), want %s", srv.Replication.LastSnapshotAt, err, now)
	}
	// A live test instance runs from the first snapshot.
	if _, err := h.st.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error {
		s.Launched = &ferry.LaunchedInstance{ID: "i-1", Snapshots: map[string]string{"sda": first.ID}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	deleted := 0
	for step := 1; step <= 24; step++ { // two hours, five minutes apart
		advance(5 * time.Minute)
		change(byte(step + 1))
		want := 0
		if step%2 == 0 {
			want = 1 // ten minutes since the last one
		}
		deleted += pass(want).Deleted
	}
	snaps := d.Snapshots()
	ids := func(ss []replica.SnapshotInfo) (out []string) {
		for _, s := range ss {
			out = append(out, s.ID+"@"+s.Time.Format("15:04"))
		}
		return out
	}
	// Kept: the in-use first one, and one per 10 minutes of the last hour
	// (the snapshot exactly an hour old has aged out).
	if len(snaps) != 7 {
		t.Errorf("after two hours: %d snapshots %v, want 7 (the in-use one and six of the last hour)", len(snaps), ids(snaps))
	}
	if !slices.ContainsFunc(snaps, func(s replica.SnapshotInfo) bool { return s.ID == first.ID }) {
		t.Errorf("the snapshot a live instance runs from was deleted: %v", ids(snaps))
	}
	for _, s := range snaps {
		if s.ID != first.ID && now.Sub(s.Time) >= time.Hour {
			t.Errorf("snapshot %s of %s outlived the one-hour policy", s.ID, s.Time)
		}
	}
	if deleted != 12-6 {
		t.Errorf("retention deleted %d snapshots, want 6", deleted)
	}
	// Once the instance is terminated, its snapshot goes too.
	if _, err := h.st.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error {
		s.Launched.TerminatedAt = now
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if res := pass(0); res.Deleted != 1 {
		t.Errorf("after terminate: deleted %d, want the old in-use snapshot", res.Deleted)
	}
	// An unchanged disk gets no new point: its newest snapshot stands.
	advance(30 * time.Minute)
	pass(0)
	if n := len(d.Snapshots()); n == 0 {
		t.Error("retention deleted the newest snapshot")
	}
	sdb, _ := h.rs.Disk(dataplane.DiskID("s-1", "sdb"))
	if n := len(sdb.Snapshots()); n != 0 {
		t.Errorf("disk without a barrier has %d snapshots", n)
	}
}

// TestPick checks the choice of existing snapshots for a launch: by id
// (the only disk's, or per disk) and by point in time, with the errors
// that name what is wrong.
func TestPick(t *testing.T) {
	h := newHarness(t)
	ctx := t.Context()
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	d, err := h.rs.CreateDisk(ctx, dataplane.DiskID("s-1", "sda"), 1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error {
		s.Lifecycle = ferry.LifecycleReadyForTest
		s.Disks = []ferry.Disk{{Name: "sda", SizeBytes: 1 << 20}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 3 {
		seq := uint64(2*i + 1)
		if err := d.Write(ctx, seq, 0, bytes.Repeat([]byte{byte(i + 1)}, 4096)); err != nil {
			t.Fatal(err)
		}
		if err := d.Barrier(ctx, seq+1, replica.CrashConsistent); err != nil {
			t.Fatal(err)
		}
		sn, err := d.Snapshot(ctx, replica.SnapshotOptions{Consistency: replica.CrashConsistent, Time: t0.Add(time.Duration(i) * 10 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sn.ID)
	}
	for _, tc := range []struct {
		name    string
		ids     map[string]string
		at      time.Time
		want    string
		wantErr string
	}{
		{name: "the only disk's id", ids: map[string]string{"": ids[1]}, want: ids[1]},
		{name: "by disk name", ids: map[string]string{"sda": ids[0]}, want: ids[0]},
		{name: "unknown id", ids: map[string]string{"sda": "ffff"}, wantErr: `disk sda has no snapshot "ffff"`},
		{name: "unknown disk", ids: map[string]string{"sdz": ids[0]}, wantErr: `has no disk "sdz"`},
		{name: "between two", at: t0.Add(15 * time.Minute), want: ids[1]},
		{name: "exactly at one", at: t0.Add(20 * time.Minute), want: ids[2]},
		{name: "before the first", at: t0.Add(-time.Minute), wantErr: "no snapshot taken at or before 2026-11-25T11:59:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := h.dp.Pick(ctx, "s-1", tc.ids, tc.at)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("Pick = %v, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got["sda"] != tc.want || len(got) != 1 {
				t.Errorf("Pick = %v, %v; want sda=%s", got, err, tc.want)
			}
		})
	}
}
