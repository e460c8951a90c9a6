package dataplane_test

import (
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

// TestAgentNotSeen: servers whose agents have been disconnected longer
// than AgentNotSeenAfter get AGENT_NOT_SEEN, once; servers that are
// recent, disconnected from the service, archived, cut over, stopped or
// already in error do not, except UNSTABLE_NETWORK, which it replaces; the
// agent's next session clears it.
func TestAgentNotSeen(t *testing.T) {
	h := newHarness(t)
	ctx := t.Context()
	now := time.Now()
	old, recent := now.Add(-20*time.Minute), now.Add(-time.Minute)
	tests := []struct {
		id   string
		set  func(s *ferry.SourceServer)
		want bool
	}{
		{"s-old", func(s *ferry.SourceServer) {}, true},
		{"s-recent", func(s *ferry.SourceServer) { s.LastSeenAt = recent }, false},
		{"s-never", func(s *ferry.SourceServer) { s.LastSeenAt = time.Time{} }, false},
		{"s-gone", func(s *ferry.SourceServer) { s.Lifecycle = ferry.LifecycleDisconnected }, false},
		{"s-cut", func(s *ferry.SourceServer) { s.Lifecycle = ferry.LifecycleCutover }, false},
		{"s-arch", func(s *ferry.SourceServer) { s.Archived = true }, false},
		{"s-stop", func(s *ferry.SourceServer) { s.Desired = ferry.DesiredStop }, false},
		{"s-err", func(s *ferry.SourceServer) { s.Replication.ErrorCode = ferry.ErrCodeSnapshotsFailure }, false},
		{"s-unstable", func(s *ferry.SourceServer) { s.Replication.ErrorCode = ferry.ErrCodeUnstableNetwork }, true},
		{"s-live", func(s *ferry.SourceServer) { s.Replication.State = ferry.ReplicationContinuous }, false},
	}
	for _, tt := range tests {
		s := &ferry.SourceServer{ID: tt.id, MachineID: "m-" + tt.id, Hostname: tt.id, Lifecycle: ferry.LifecycleReadyForTest,
			LastSeenAt: old, Replication: ferry.ReplicationInfo{State: ferry.ReplicationDisconnected}}
		tt.set(s)
		if err := h.st.CreateServer(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// s-1 is the harness's paired server; its agent comes back below.
	if _, err := h.st.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error {
		s.Lifecycle, s.LastSeenAt, s.Replication.State = ferry.LifecycleReadyForTest, old, ferry.ReplicationDisconnected
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	n, err := h.dp.MarkAgentsNotSeen(ctx)
	if err != nil || n != 3 {
		t.Fatalf("marked %d, %v; want s-old, s-unstable and s-1", n, err)
	}
	for _, tt := range append(tests, struct {
		id   string
		set  func(s *ferry.SourceServer)
		want bool
	}{id: "s-1", want: true}) {
		s, err := h.st.Server(ctx, tt.id)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Replication.ErrorCode == ferry.ErrCodeAgentNotSeen; got != tt.want {
			t.Errorf("%s: AGENT_NOT_SEEN %v, want %v (%q)", tt.id, got, tt.want, s.Replication.ErrorCode)
		}
		if tt.want && s.Replication.ErrorMessage == "" {
			t.Errorf("%s: AGENT_NOT_SEEN without a message", tt.id)
		}
	}
	if n, err := h.dp.MarkAgentsNotSeen(ctx); err != nil || n != 0 {
		t.Fatalf("second pass marked %d, %v; want none", n, err)
	}
	// The agent of s-1 connects: its session clears the error.
	h.hello(t)
	eventually(t, 10*time.Second, "AGENT_NOT_SEEN cleared by the agent's session", func() bool {
		s, _ := h.st.Server(ctx, "s-1")
		return s.Replication.ErrorCode == ""
	})
}
