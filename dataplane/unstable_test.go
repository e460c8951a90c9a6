package dataplane

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/protocol"
)

// TestRecordDrop: the drops of the window ending at the latest one make a
// server unstable once they reach the threshold; older ones do not count,
// and the ring keeps a bounded number of them.
func TestRecordDrop(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 9, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		threshold int
		window    time.Duration
		drops     []time.Duration // after t0, in order
		want      string          // in the text; "" for not unstable
	}{
		{"one drop", 0, 0, []time.Duration{0}, ""},
		{"two drops", 0, 0, []time.Duration{0, time.Minute}, ""},
		{"three within the window", 0, 0, []time.Duration{0, time.Minute, 2 * time.Minute}, "dropped 3 times within 2m0s (3 or more within 10m0s"},
		{"three just within", 0, 0, []time.Duration{0, 6 * time.Minute, 10*time.Minute - time.Second}, "dropped 3 times within 9m59s"},
		{"three over exactly the window", 0, 0, []time.Duration{0, 6 * time.Minute, 10 * time.Minute}, ""},
		{"old drops age out", 0, 0, []time.Duration{0, time.Minute, 2 * time.Minute, 30 * time.Minute}, ""},
		{"a new burst after a quiet spell", 0, 0, []time.Duration{0, time.Minute, 30 * time.Minute, 31 * time.Minute, 32 * time.Minute}, "dropped 3 times within 2m0s"},
		{"four within the window", 0, 0, []time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second}, "dropped 4 times within 3s"},
		{"under a second", 0, 0, []time.Duration{0, 100 * time.Millisecond, 250 * time.Millisecond}, "within 250ms"},
		{"threshold 2, window 1 min", 2, time.Minute, []time.Duration{0, 30 * time.Second}, "dropped 2 times within 30s (2 or more within 1m0s"},
		{"threshold 2, window 1 min, too far apart", 2, time.Minute, []time.Duration{0, 90 * time.Second}, ""},
		{"threshold 1", 1, 0, []time.Duration{0}, "dropped once within 0s"},
		{"more than the ring holds", 0, 0, func() (d []time.Duration) {
			for i := range 20 {
				d = append(d, time.Duration(i)*10*time.Second)
			}
			return d
		}(), "dropped at least 8 times within 1m10s"},
		{"threshold above the cap", 1000, time.Hour, func() (d []time.Duration) {
			for i := range 64 {
				d = append(d, time.Duration(i)*time.Second)
			}
			return d
		}(), "dropped at least 64 times within 1m3s (64 or more within 1h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Server{UnstableDrops: tt.threshold, UnstableWindow: tt.window}
			var got string
			for i, d := range tt.drops {
				got = s.recordDrop("s-1", t0.Add(d), fmt.Sprintf("drop %d: connection reset by peer", i))
			}
			if tt.want == "" {
				if got != "" {
					t.Fatalf("unstable: %q", got)
				}
			} else {
				if !strings.Contains(got, tt.want) {
					t.Fatalf("text %q does not contain %q", got, tt.want)
				}
				if last := fmt.Sprintf("last error: drop %d: connection reset by peer", len(tt.drops)-1); !strings.HasSuffix(got, last) {
					t.Fatalf("text %q does not end with %q", got, last)
				}
			}
			if text, logged := s.dropState("s-1"); text != got || !logged {
				t.Fatalf("dropState = %q, %v; want %q, true", text, logged, got)
			}
			l := s.drops["s-1"]
			if ring := max(s.unstableDrops(), minDropRing); cap(l.at) != ring || len(l.at) > ring {
				t.Fatalf("ring holds %d of %d; want a ring of %d", len(l.at), cap(l.at), ring)
			}
			s.forgetDrops("s-1")
			if text, logged := s.dropState("s-1"); text != "" || logged {
				t.Fatalf("after forgetDrops: %q, %v", text, logged)
			}
			if text, logged := s.dropState("s-2"); text != "" || logged {
				t.Fatalf("another server's drops: %q, %v", text, logged)
			}
		})
	}
}

// TestMarkUnstable: the drop that reaches the threshold gives the server
// UNSTABLE_NETWORK only where no other error stands and replication is
// meant to run.
func TestMarkUnstable(t *testing.T) {
	const text = "the agent's data-plane connection dropped 3 times within 1m0s"
	tests := []struct {
		name     string
		set      func(*ferry.SourceServer)
		text     string
		wantCode ferry.ReplicationErrorCode
		wantMsg  string
		wantNew  bool
	}{
		{"no error", func(*ferry.SourceServer) {}, text, ferry.ErrCodeUnstableNetwork, text, true},
		{"not unstable", func(*ferry.SourceServer) {}, "", "", "", false},
		{"already unstable: newer text", func(s *ferry.SourceServer) {
			s.Replication.ErrorCode, s.Replication.ErrorMessage = ferry.ErrCodeUnstableNetwork, "older"
		}, text, ferry.ErrCodeUnstableNetwork, text, false},
		{"AGENT_NOT_SEEN stands", func(s *ferry.SourceServer) {
			s.Replication.ErrorCode, s.Replication.ErrorMessage = ferry.ErrCodeAgentNotSeen, "x"
		}, text, ferry.ErrCodeAgentNotSeen, "x", false},
		{"NOT_CONVERGING stands", func(s *ferry.SourceServer) {
			s.Replication.ErrorCode, s.Replication.ErrorMessage = ferry.ErrCodeNotConverging, "x"
		}, text, ferry.ErrCodeNotConverging, "x", false},
		{"SNAPSHOTS_FAILURE stands", func(s *ferry.SourceServer) {
			s.Replication.ErrorCode, s.Replication.ErrorMessage = ferry.ErrCodeSnapshotsFailure, "x"
		}, text, ferry.ErrCodeSnapshotsFailure, "x", false},
		{"UNSUPPORTED_CONFIGURATION stands", func(s *ferry.SourceServer) {
			s.Replication.ErrorCode, s.Replication.ErrorMessage = ferry.ErrCodeUnsupportedConfiguration, "x"
		}, text, ferry.ErrCodeUnsupportedConfiguration, "x", false},
		{"FAILED_TO_CREATE_STAGING_DISKS stands", func(s *ferry.SourceServer) {
			s.Replication.ErrorCode, s.Replication.ErrorMessage = ferry.FailedTo(ferry.StepCreateStagingDisks), "x"
		}, text, ferry.FailedTo(ferry.StepCreateStagingDisks), "x", false},
		{"paused", func(s *ferry.SourceServer) { s.Desired = ferry.DesiredPause }, text, "", "", false},
		{"stopped", func(s *ferry.SourceServer) { s.Desired = ferry.DesiredStop }, text, "", "", false},
		{"archived", func(s *ferry.SourceServer) { s.Archived = true }, text, "", "", false},
		{"disconnected from the service", func(s *ferry.SourceServer) { s.Lifecycle = ferry.LifecycleDisconnected }, text, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &ferry.SourceServer{ID: "s-1", Lifecycle: ferry.LifecycleReadyForTest,
				Replication: ferry.ReplicationInfo{State: ferry.ReplicationDisconnected}}
			tt.set(srv)
			gotNew := markUnstable(srv, tt.text)
			if srv.Replication.ErrorCode != tt.wantCode || srv.Replication.ErrorMessage != tt.wantMsg || gotNew != tt.wantNew {
				t.Fatalf("got %q %q new=%v; want %q %q new=%v", srv.Replication.ErrorCode, srv.Replication.ErrorMessage, gotNew,
					tt.wantCode, tt.wantMsg, tt.wantNew)
			}
		})
	}
}

// TestSessionError: what a live session records, and when it keeps or
// clears UNSTABLE_NETWORK.
func TestSessionError(t *testing.T) {
	const window = 10 * time.Minute
	unstable := ferry.ReplicationInfo{ErrorCode: ferry.ErrCodeUnstableNetwork, ErrorMessage: "dropped 3 times (recorded)"}
	notSeen := ferry.ReplicationInfo{ErrorCode: ferry.ErrCodeAgentNotSeen, ErrorMessage: "no contact"}
	snapErr := errors.New("fold: disk full")
	tests := []struct {
		name     string
		cur      ferry.ReplicationInfo
		state    ferry.ReplicationState
		snapErr  error
		text     string // this replication server's UNSTABLE_NETWORK text
		upFor    time.Duration
		wantCode ferry.ReplicationErrorCode
		wantMsg  string
	}{
		{"healthy", ferry.ReplicationInfo{}, ferry.ReplicationContinuous, nil, "", time.Minute, "", ""},
		{"snapshot failure", ferry.ReplicationInfo{}, ferry.ReplicationContinuous, snapErr, "", time.Minute, ferry.ErrCodeSnapshotsFailure, snapErr.Error()},
		{"snapshot failure over unstable", unstable, ferry.ReplicationContinuous, snapErr, "dropped", time.Minute, ferry.ErrCodeSnapshotsFailure, snapErr.Error()},
		{"stalled over unstable", unstable, ferry.ReplicationStalled, nil, "dropped", time.Minute, ferry.ErrCodeNotConverging, "no progress from the agent"},
		{"unstable kept with its text", unstable, ferry.ReplicationContinuous, nil, "", time.Minute, unstable.ErrorCode, unstable.ErrorMessage},
		{"unstable kept over a newer text", unstable, ferry.ReplicationContinuous, nil, "dropped 4 times", time.Minute, unstable.ErrorCode, unstable.ErrorMessage},
		{"unstable kept just short of the window", unstable, ferry.ReplicationBacklog, nil, "", window - time.Second, unstable.ErrorCode, unstable.ErrorMessage},
		{"unstable cleared after the window", unstable, ferry.ReplicationContinuous, nil, "", window, "", ""},
		{"unstable cleared after the window, text or not", unstable, ferry.ReplicationContinuous, nil, "dropped", window + time.Hour, "", ""},
		{"unstable from the drop log", ferry.ReplicationInfo{}, ferry.ReplicationContinuous, nil, "dropped 3 times", time.Second, ferry.ErrCodeUnstableNetwork, "dropped 3 times"},
		{"unstable from the drop log replaces AGENT_NOT_SEEN", notSeen, ferry.ReplicationInitiating, nil, "dropped 3 times", 0, ferry.ErrCodeUnstableNetwork, "dropped 3 times"},
		{"AGENT_NOT_SEEN cleared by a session", notSeen, ferry.ReplicationInitiating, nil, "", 0, "", ""},
		{"drop log too old", ferry.ReplicationInfo{}, ferry.ReplicationContinuous, nil, "dropped 3 times", window, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, msg := sessionError(tt.cur, tt.state, tt.snapErr, tt.text, tt.upFor, window)
			if code != tt.wantCode || msg != tt.wantMsg {
				t.Fatalf("got %q %q; want %q %q", code, msg, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

// TestDropCounts: only drops count, and not while the server shuts down
// or replication is paused or stopped.
func TestDropCounts(t *testing.T) {
	tests := []struct {
		name         string
		drop         bool
		shuttingDown bool
		desired      uint8
		want         bool
	}{
		{"drop while replicating", true, false, protocol.DesiredRun, true},
		{"planned end", false, false, protocol.DesiredRun, false},
		{"drop while shutting down", true, true, protocol.DesiredRun, false},
		{"drop while paused", true, false, protocol.DesiredPause, false},
		{"drop while stopped", true, false, protocol.DesiredStop, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dropCounts(tt.drop, tt.shuttingDown, tt.desired); got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}
