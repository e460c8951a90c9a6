package dataplane

import (
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/protocol"
)

func TestDeriveState(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	live := StateInput{Connected: true, Started: true, Now: t0, LastHeard: t0, LastProgress: t0, StallAfter: time.Minute,
		Phases: []protocol.Phase{protocol.PhaseContinuous}}
	with := func(f func(*StateInput)) StateInput { in := live; f(&in); return in }
	tests := []struct {
		name string
		in   StateInput
		want ferry.ReplicationState
	}{
		{"connection lost", with(func(in *StateInput) { in.Connected = false }), ferry.ReplicationDisconnected},
		{"stopped by operator", with(func(in *StateInput) { in.Desired = ferry.DesiredStop }), ferry.ReplicationStopped},
		{"paused by operator", with(func(in *StateInput) { in.Desired = ferry.DesiredPause }), ferry.ReplicationPaused},
		{"before hello", with(func(in *StateInput) { in.Started = false }), ferry.ReplicationInitiating},
		{"before first stats", with(func(in *StateInput) { in.Phases = nil }), ferry.ReplicationInitiating},
		{"silent agent", with(func(in *StateInput) { in.Now = t0.Add(2 * time.Minute) }), ferry.ReplicationStalled},
		{"no progress with data pending", with(func(in *StateInput) {
			in.Now, in.LastHeard, in.Pending = t0.Add(2*time.Minute), t0.Add(2*time.Minute), true
		}), ferry.ReplicationStalled},
		{"idle is not stalled", with(func(in *StateInput) { in.Now, in.LastHeard = t0.Add(2*time.Minute), t0.Add(2*time.Minute) }), ferry.ReplicationContinuous},
		{"snapshot", with(func(in *StateInput) { in.Snapshotting = true }), ferry.ReplicationCreatingSnapshot},
		{"initial sync wins", with(func(in *StateInput) {
			in.Phases = []protocol.Phase{protocol.PhaseBacklog, protocol.PhaseInitialSync, protocol.PhaseRescan}
		}), ferry.ReplicationInitialSync},
		{"rescan over backlog", with(func(in *StateInput) {
			in.Phases = []protocol.Phase{protocol.PhaseBacklog, protocol.PhaseRescan}
		}), ferry.ReplicationRescan},
		{"backlog", with(func(in *StateInput) {
			in.Phases = []protocol.Phase{protocol.PhaseContinuous, protocol.PhaseBacklog}
		}), ferry.ReplicationBacklog},
		{"continuous", live, ferry.ReplicationContinuous},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DeriveState(tt.in); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestLagAndETA(t *testing.T) {
	t0 := time.Unix(1000, 0)
	st := &protocol.Stats{SentAtUnixNano: t0.UnixNano(), OldestUnsentUnixNano: t0.Add(-3 * time.Second).UnixNano()}
	if got := Lag(st, t0, t0.Add(time.Second)); got != 4*time.Second {
		t.Fatalf("lag %v", got)
	}
	if got := Lag(&protocol.Stats{SentAtUnixNano: 5}, t0, t0); got != 0 {
		t.Fatalf("lag with nothing unsent %v", got)
	}
	if got := ETA(100<<20, 10<<20); got != 10*time.Second {
		t.Fatalf("eta %v", got)
	}
	if got := ETA(100, 0); got != 0 {
		t.Fatalf("eta with unknown rate %v", got)
	}
}
