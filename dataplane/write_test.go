package dataplane

import (
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

func TestNeedsWrite(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	base := func() *ferry.SourceServer {
		return &ferry.SourceServer{ID: "s-1", Lifecycle: ferry.LifecycleReadyForTest, LastSeenAt: t0,
			Replication: ferry.ReplicationInfo{State: ferry.ReplicationContinuous, LagSeconds: 5,
				Steps: []ferry.InitiationStepState{{Step: ferry.StepStartDataTransfer, Status: ferry.StepSucceeded}}},
			Disks: []ferry.Disk{{Name: "vda", SizeBytes: 1 << 30, ReplicatedBytes: 1 << 30}}}
	}
	tests := []struct {
		name   string
		change func(*ferry.SourceServer)
		since  time.Duration
		want   bool
	}{
		{"nothing", func(*ferry.SourceServer) {}, time.Second, false},
		{"nothing after the refresh time", func(*ferry.SourceServer) {}, time.Minute, false},
		{"last seen only", func(s *ferry.SourceServer) { s.LastSeenAt = t0.Add(5 * time.Second) }, time.Second, false},
		{"last seen, refresh due", func(s *ferry.SourceServer) { s.LastSeenAt = t0.Add(5 * time.Second) }, refreshEvery, true},
		{"lag moved a little", func(s *ferry.SourceServer) { s.Replication.LagSeconds = 5.4 }, time.Second, false},
		{"lag moved a second", func(s *ferry.SourceServer) { s.Replication.LagSeconds = 6.1 }, time.Second, true},
		{"state", func(s *ferry.SourceServer) { s.Replication.State = ferry.ReplicationStalled }, time.Second, true},
		{"lifecycle", func(s *ferry.SourceServer) { s.Lifecycle = ferry.LifecycleTesting }, time.Second, true},
		{"disk bytes", func(s *ferry.SourceServer) { s.Disks[0].BackloggedBytes = 4096 }, time.Second, true},
		{"step", func(s *ferry.SourceServer) { s.Replication.Steps[0].Status = ferry.StepFailed }, time.Second, true},
		{"error", func(s *ferry.SourceServer) { s.Replication.ErrorCode = ferry.ErrCodeNotConverging }, time.Second, true},
		{"same instant in another location", func(s *ferry.SourceServer) {
			s.Replication.LastSnapshotAt = time.Time{}.In(time.FixedZone("x", 3600))
		}, time.Minute, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := base()
			before := recordOf(srv)
			c := cloneForUpdate(srv)
			tt.change(c)
			if got := needsWrite(before, recordOf(c), tt.since, refreshEvery); got != tt.want {
				t.Fatalf("needsWrite = %v, want %v", got, tt.want)
			}
			if len(srv.Disks) > 0 && srv.Disks[0].BackloggedBytes != 0 || srv.Replication.Steps[0].Status != ferry.StepSucceeded {
				t.Fatal("the update changed the cached record through the clone")
			}
		})
	}
}

// TestRefreshEveryScales: the record refresh stays at refreshEvery up to
// refreshFleet agents and grows with the fleet beyond, so that all
// sessions together refresh at most refreshFleet/refreshEvery a second.
func TestRefreshEveryScales(t *testing.T) {
	for _, tt := range []struct {
		live int64
		want time.Duration
	}{
		{0, refreshEvery},
		{1, refreshEvery},
		{refreshFleet, refreshEvery},
		{2 * refreshFleet, 2 * refreshEvery},
		{10000, 100 * time.Second},
	} {
		var s Server
		s.live.Store(tt.live)
		if got := s.refreshEvery(); got != tt.want {
			t.Errorf("%d agents: refresh every %v, want %v", tt.live, got, tt.want)
		}
	}
}
