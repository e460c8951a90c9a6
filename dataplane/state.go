package dataplane

import (
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/protocol"
)

// StateInput is what the replication server knows about one agent's
// session when it derives the server's data replication state.
type StateInput struct {
	// Connected says the agent's data-plane connection is open.
	Connected bool
	// Started says the agent's HELLO was accepted.
	Started bool
	// Desired is the operator's instruction.
	Desired ferry.DesiredReplication
	// Phases are the disks' phases from the agent's last STATS (nil before
	// the first).
	Phases []protocol.Phase
	// Snapshotting says a snapshot is being taken.
	Snapshotting bool
	// Pending says the agent has data it has not yet had acknowledged
	// (initial sync unfinished, backlog, or writes in flight).
	Pending bool
	// Now is the current time; LastHeard is when the agent last sent
	// anything, LastProgress when an acknowledgement last advanced (or the
	// session started).
	Now, LastHeard, LastProgress time.Time
	// StallAfter is how long without a message, or without progress while
	// data is pending, makes the replication STALLED.
	StallAfter time.Duration
}

// DeriveState returns the data replication state for in. It is a pure
// function; the session calls it about once a second.
func DeriveState(in StateInput) ferry.ReplicationState {
	switch {
	case !in.Connected:
		return ferry.ReplicationDisconnected
	case in.Desired == ferry.DesiredStop:
		return ferry.ReplicationStopped
	case in.Desired == ferry.DesiredPause:
		return ferry.ReplicationPaused
	case !in.Started || in.Phases == nil:
		return ferry.ReplicationInitiating
	case in.Now.Sub(in.LastHeard) > in.StallAfter:
		return ferry.ReplicationStalled
	case in.Pending && in.Now.Sub(in.LastProgress) > in.StallAfter:
		return ferry.ReplicationStalled
	case in.Snapshotting:
		return ferry.ReplicationCreatingSnapshot
	}
	// The disk furthest behind decides.
	rank := map[protocol.Phase]int{protocol.PhaseContinuous: 1, protocol.PhaseBacklog: 2, protocol.PhaseRescan: 3, protocol.PhaseInitialSync: 4}
	worst := protocol.PhaseContinuous
	for _, p := range in.Phases {
		if rank[p] > rank[worst] {
			worst = p
		}
	}
	switch worst {
	case protocol.PhaseInitialSync:
		return ferry.ReplicationInitialSync
	case protocol.PhaseRescan:
		return ferry.ReplicationRescan
	case protocol.PhaseBacklog:
		return ferry.ReplicationBacklog
	}
	return ferry.ReplicationContinuous
}

// Lag returns the replication lag from an agent's STATS received at
// receivedAt: how long the oldest unsent write has waited, on the agent's
// clock, plus the time since the message arrived.
func Lag(st *protocol.Stats, receivedAt, now time.Time) time.Duration {
	if st == nil || st.OldestUnsentUnixNano == 0 {
		return 0
	}
	lag := time.Duration(st.SentAtUnixNano-st.OldestUnsentUnixNano) + now.Sub(receivedAt)
	return max(lag, 0)
}

// ETA returns how long the remaining bytes take at rate bytes/s (0 when
// nothing remains or the rate is unknown).
func ETA(remaining int64, rate float64) time.Duration {
	if remaining <= 0 || rate <= 0 {
		return 0
	}
	return time.Duration(float64(remaining) / rate * float64(time.Second))
}

// desiredCode maps the operator's instruction to the protocol's.
func desiredCode(d ferry.DesiredReplication) uint8 {
	switch d {
	case ferry.DesiredPause:
		return protocol.DesiredPause
	case ferry.DesiredStop:
		return protocol.DesiredStop
	}
	return protocol.DesiredRun
}
