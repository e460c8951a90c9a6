package dataplane

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/protocol"
)

// activeSession is a server's current session, so a reconnecting agent
// can replace it.
type activeSession struct {
	done chan struct{}
	// cancel ends the session; replaced says a newer session of the same
	// agent is taking over (otherwise the replica is being deleted).
	// Guarded by Server.mu.
	cancel func(replaced bool)
	sess   *session // set once the disks are open; guarded by Server.mu
}

// silentReplaced is how long a session must have heard nothing from its
// agent for its replacement to count as a drop: two of the agent's
// heartbeats. An agent that opens a new session while its old one is
// still talking chose to; one whose old connection went quiet lost it
// (half-open after a network failure) and only noticed now.
const silentReplaced = 2 * protocol.HeartbeatEvery

// cancel ends the session for a newer one of the same agent (replaced)
// or for the replica's deletion. It is the session's activeSession.cancel
// from the moment it claims the server, so a newer session never waits
// for one that has not reached its control loop yet.
func (ss *session) cancel(replaced bool) {
	switch silent := ss.silentFor(); {
	case !replaced:
		ss.ending(false, "ended by the replication server (the replica's deletion)")
	case silent >= silentReplaced:
		ss.ending(true, fmt.Sprintf("the agent started a new session after %s without a word on this one (a half-open connection)", silent.Round(time.Second)))
	default:
		// The agent chose to reconnect: no drop.
		ss.ending(false, "replaced by a newer session of the same agent")
	}
	ss.c.Close()
}

// controlLoop sends heartbeats, pushes SETTINGS when the operator changes
// them, and keeps the control plane's record of the server current (about
// once per poll interval). It returns when the session must end.
func (ss *session) controlLoop(ctx context.Context) {
	poll := ss.s.PollInterval
	if poll <= 0 {
		poll = defaultPoll
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	if err := ss.send(&protocol.Heartbeat{UnixNano: ss.s.now().UnixNano()}); err != nil {
		return
	}
	defer ss.heartbeats()()
	var rate float64
	var lastAcked int64
	first := true
	var started time.Time
	for {
		now := ss.s.now()
		ackedBytes := ss.durableBytes()
		if !first {
			inst := float64(ackedBytes-lastAcked) / poll.Seconds()
			rate = 0.7*rate + 0.3*inst
		} else {
			started = now
		}
		lastAcked = ackedBytes
		settings := ss.update(ctx, now, rate, started)
		if first || settings != ss.settings {
			if settings.Disconnect {
				// Recorded before the agent can read it and close the
				// connection, which would look like a drop.
				ss.ending(false, "disconnected from the service")
			}
			if err := ss.send(&settings); err != nil {
				return
			}
			ss.settings = settings
			if settings.Disconnect {
				// Give the agent a moment to read it, then end.
				time.Sleep(200 * time.Millisecond)
				return
			}
		}
		first = false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-ss.poke:
			ss.readAt = time.Time{} // re-read the record now
		case <-ss.wake:
		}
	}
}

// heartbeats sends a HEARTBEAT every protocol.HeartbeatEvery on a timer of its own
// until the returned stop is called. The control loop cannot send them: its
// record update waits on the metadata store, which thousands of sessions
// share (one SQLite writer), and at 10,000 agents that wait outlasted the
// agents' 30 s read timeout and ended their sessions.
func (ss *session) heartbeats() (stop func()) {
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(protocol.HeartbeatEvery, func() {
		if ss.send(&protocol.Heartbeat{UnixNano: ss.s.now().UnixNano()}) != nil {
			return // the connection is gone; the session ends without us
		}
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			t.Reset(protocol.HeartbeatEvery)
		}
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}

// durableBytes is the replicated plus rescanned bytes the agent reports,
// a measure of progress for the rate (and so the ETA).
func (ss *session) durableBytes() int64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.stats == nil {
		return 0
	}
	var n int64
	for _, d := range ss.stats.Disks {
		n += d.ReplicatedBytes + d.RescannedBytes
	}
	return n
}

// update writes the session's picture to the server's record and returns
// the settings to send (Disconnect set when the server was disconnected
// from the service or archived).
func (ss *session) update(ctx context.Context, now time.Time, rate float64, started time.Time) protocol.Settings {
	ss.mu.Lock()
	var st *protocol.Stats
	if ss.stats != nil {
		c := *ss.stats
		c.Disks = append([]protocol.DiskStats(nil), ss.stats.Disks...)
		st = &c
	}
	statsAt, lastHeard, lastProgress := ss.statsAt, ss.lastHeard, ss.lastProgress
	snapshotting, snapErr, snapAt := ss.snapshotting > 0, ss.snapErr, ss.snapAt
	acked := append([]uint64(nil), ss.acked...)
	ss.mu.Unlock()

	var settings protocol.Settings
	readied, steadied := false, false
	sent := ss.unsavedSent()
	upFor, window := now.Sub(started), ss.s.unstableWindow()
	if ss.dropLogged && upFor >= window {
		// Up for the window: the drops before this session can no longer
		// count with a next one.
		ss.s.forgetDrops(ss.id)
		ss.dropLogged = false
	}
	// Replicating time counts from the previous written update, at most
	// a few polls past the longest a session goes without writing (a
	// longer gap was not spent replicating).
	var elapsed time.Duration
	if !ss.countedAt.IsZero() {
		elapsed = min(max(now.Sub(ss.countedAt), 0), ss.s.refreshEvery()+5*ss.s.pollInterval())
	}
	apply := func(srv *ferry.SourceServer) error {
		readied, steadied = false, false
		ss.addSent(srv, sent)
		settings = protocol.Settings{BandwidthBytesPerSec: srv.ReplicationSetup.BandwidthBytesPerSec, Desired: desiredCode(srv.Desired)}
		if srv.Lifecycle == ferry.LifecycleDisconnected || srv.Archived {
			settings.Disconnect = true
			srv.Replication.State = ferry.ReplicationDisconnected
			return nil
		}
		in := StateInput{Connected: true, Started: true, Desired: srv.Desired, Snapshotting: snapshotting,
			Now: now, LastHeard: lastHeard, LastProgress: lastProgress, StallAfter: ss.s.stallAfter()}
		var remaining int64
		allSynced := st != nil && len(st.Disks) == len(ss.disks)
		if st != nil {
			for i, d := range st.Disks {
				in.Phases = append(in.Phases, d.Phase)
				if i >= len(ss.disks) {
					break
				}
				sd := ss.disks[i]
				if !d.SyncDone {
					remaining += max(sd.size.Load()-d.ReplicatedBytes, 0)
				}
				remaining += d.BackloggedBytes
				if !d.SyncDone || acked[i] < d.SyncSeq {
					allSynced = false
				}
				setDisk(srv, sd.name, sd.size.Load(), d)
			}
		}
		in.Pending = remaining > 0
		srv.Replication.State = DeriveState(in)
		if countsAsReplicating(srv.Replication.State) {
			srv.Replication.ReplicatingSeconds += elapsed.Seconds()
		}
		srv.Replication.LagSeconds = Lag(st, statsAt, now).Seconds()
		srv.Replication.ETASeconds = ETA(remaining, rate).Seconds()
		if !snapAt.IsZero() {
			srv.Replication.LastSnapshotAt = snapAt
		}
		code, msg := sessionError(srv.Replication, srv.Replication.State, snapErr, ss.unstable, upFor, window)
		steadied = srv.Replication.ErrorCode == ferry.ErrCodeUnstableNetwork && code == ""
		srv.Replication.ErrorCode, srv.Replication.ErrorMessage = code, msg
		srv.LastSeenAt = lastHeard
		for i := range srv.Replication.Steps {
			switch srv.Replication.Steps[i].Step {
			case ferry.StepPairReplicationServerWithAgent, ferry.StepConnectAgentToReplicationServer:
				srv.Replication.Steps[i].Status = ferry.StepSucceeded
			}
		}
		setStep(srv, ferry.StepCreateStagingDisks, ferry.StepSucceeded)
		if lastProgress.After(started) {
			setStep(srv, ferry.StepStartDataTransfer, ferry.StepSucceeded)
		}
		if srv.Lifecycle == ferry.LifecycleDiscovered && ferry.CheckTransition(srv.Lifecycle, ferry.LifecycleNotReady) == nil {
			// A catalogued source (the connector's) starts replicating.
			srv.Lifecycle = ferry.LifecycleNotReady
		}
		if allSynced && srv.Lifecycle == ferry.LifecycleNotReady && ferry.CheckTransition(srv.Lifecycle, ferry.LifecycleReadyForTest) == nil {
			srv.Lifecycle = ferry.LifecycleReadyForTest
			readied = true
		}
		return nil
	}
	// Most seconds change nothing an operator sees: apply the update to
	// the record as last read or written (re-read every SettingsPoll, or
	// at once after Notify) and write only when it differs. A server with
	// thousands of agents would otherwise read and write thousands of
	// records a second.
	if ss.record == nil || now.Sub(ss.readAt) >= ss.s.settingsPoll() || now.Before(ss.readAt) {
		if cur, err := ss.s.Store.Server(ctx, ss.id); err == nil {
			ss.record, ss.readAt = cur, now
		}
	}
	if ss.record != nil {
		cur := cloneForUpdate(ss.record)
		before := recordOf(cur)
		if apply(cur) == nil && !needsWrite(before, recordOf(cur), now.Sub(ss.written), ss.s.refreshEvery()) {
			return settings
		}
	}
	out, err := ss.s.Store.UpdateServer(ctx, ss.id, apply)
	if err != nil {
		ss.record = nil
		if ctx.Err() == nil {
			ss.s.log().Warn("update replication state", "server", ss.id, "err", err)
		}
		return settings
	}
	ss.record, ss.readAt, ss.written = out, now, now
	ss.savedSent(sent)
	ss.countedAt = now
	if readied {
		ss.s.log().Info("initial sync complete; ready for test", "server", ss.id)
	}
	if steadied {
		ss.s.log().Info("agent connection stable again; UNSTABLE_NETWORK cleared", "server", ss.id, "up_for", upFor.Round(time.Second))
	}
	return settings
}

// refreshEvery is how stale the record's last-seen time, lag and ETA may
// get when nothing else about the server changes, with up to
// refreshFleet agents connected.
const refreshEvery = 30 * time.Second

// refreshFleet is how many connected agents refreshEvery serves. Beyond
// it the refresh interval grows with the fleet, so that all sessions
// together refresh at most refreshFleet/refreshEvery records a second
// (100): the metadata store has one writer, and at 10,000 agents a
// 30-second refresh alone asked it for more writes than it could commit.
const refreshFleet = 3000

// refreshEvery returns the refresh interval for the agents connected now.
func (s *Server) refreshEvery() time.Duration {
	return max(refreshEvery, time.Duration(s.live.Load())*refreshEvery/refreshFleet)
}

// cloneForUpdate copies srv deeply enough for update's apply, which
// changes only the lifecycle, replication info (with its steps), disks and
// last-seen time.
func cloneForUpdate(srv *ferry.SourceServer) *ferry.SourceServer {
	c := *srv
	c.Disks = slices.Clone(srv.Disks)
	c.Replication.Steps = slices.Clone(srv.Replication.Steps)
	return &c
}

// liveRecord is the part of a server's record a session writes.
type liveRecord struct {
	lifecycle   ferry.LifecycleState
	replication ferry.ReplicationInfo
	disks       []ferry.Disk
	lastSeen    time.Time
}

// recordOf copies the fields a session writes out of srv.
func recordOf(srv *ferry.SourceServer) liveRecord {
	r := liveRecord{lifecycle: srv.Lifecycle, replication: srv.Replication, disks: slices.Clone(srv.Disks), lastSeen: srv.LastSeenAt}
	r.replication.Steps = slices.Clone(srv.Replication.Steps)
	// Bytes sent and time replicating grow with every update: they are
	// written with the next write that is due for another reason (at
	// least every refreshEvery, and when the session ends), not each.
	r.replication.ReplicatingSeconds = 0
	for i := range r.disks {
		r.disks[i].SentBytes = 0
	}
	// A store may keep times to the microsecond (PostgreSQL) and in
	// another location: compare instants at that precision.
	r.replication.LastSnapshotAt = r.replication.LastSnapshotAt.Truncate(time.Microsecond).UTC()
	r.lastSeen = r.lastSeen.Truncate(time.Microsecond).UTC()
	return r
}

// needsWrite says whether a session's update from before to after must be
// written, since written ago: any change but the last-seen time, lag and
// ETA; those only when they moved by a second and a tenth, or every
// refresh.
func needsWrite(before, after liveRecord, sinceWrite, refresh time.Duration) bool {
	if sinceWrite >= refresh {
		return !reflect.DeepEqual(before, after)
	}
	moved := func(a, b float64) bool { return math.Abs(a-b) >= max(1, 0.1*math.Abs(a)) }
	if moved(before.replication.LagSeconds, after.replication.LagSeconds) || moved(before.replication.ETASeconds, after.replication.ETASeconds) {
		return true
	}
	before.replication.LagSeconds, before.replication.ETASeconds = after.replication.LagSeconds, after.replication.ETASeconds
	before.lastSeen = after.lastSeen
	return !reflect.DeepEqual(before, after)
}

// countsAsReplicating says whether time in state counts as days
// replicated: the agent is connected and replication runs (a STALLED
// server is still meant to replicate).
func countsAsReplicating(st ferry.ReplicationState) bool {
	switch st {
	case ferry.ReplicationInitialSync, ferry.ReplicationContinuous, ferry.ReplicationBacklog, ferry.ReplicationRescan,
		ferry.ReplicationCreatingSnapshot, ferry.ReplicationStalled:
		return true
	}
	return false
}

// unsavedSent returns each disk's bytes received that the server record
// does not count yet.
func (ss *session) unsavedSent() []int64 {
	out := make([]int64, len(ss.disks))
	for i, sd := range ss.disks {
		out[i] = sd.unsaved.Load()
	}
	return out
}

// addSent adds sent (from unsavedSent) to the record's per-disk SentBytes.
// The store may call an update function more than once; each call gets a
// fresh record, so adding inside it counts once.
func (ss *session) addSent(srv *ferry.SourceServer, sent []int64) {
	for i, n := range sent {
		if n == 0 {
			continue
		}
		sd := ss.disks[i]
		found := false
		for j := range srv.Disks {
			if srv.Disks[j].Name == sd.name {
				srv.Disks[j].SentBytes += n
				found = true
				break
			}
		}
		if !found {
			srv.Disks = append(srv.Disks, ferry.Disk{Name: sd.name, SizeBytes: sd.size.Load(), SentBytes: n})
		}
	}
}

// savedSent takes what a successful update counted off the unsaved bytes;
// bytes received meanwhile stay for the next update.
func (ss *session) savedSent(sent []int64) {
	for i, n := range sent {
		ss.disks[i].unsaved.Add(-n)
	}
}

// setDisk records a disk's figures on the server, adding the disk if the
// agent replicates one that pairing did not report.
func setDisk(srv *ferry.SourceServer, name string, size int64, d protocol.DiskStats) {
	for i := range srv.Disks {
		if srv.Disks[i].Name == name {
			x := &srv.Disks[i]
			x.SizeBytes = max(x.SizeBytes, size)
			x.ReplicatedBytes, x.RescannedBytes, x.BackloggedBytes = d.ReplicatedBytes, d.RescannedBytes, d.BackloggedBytes
			return
		}
	}
	srv.Disks = append(srv.Disks, ferry.Disk{Name: name, SizeBytes: size, ReplicatedBytes: d.ReplicatedBytes,
		RescannedBytes: d.RescannedBytes, BackloggedBytes: d.BackloggedBytes})
}

// setStep sets an initiation step's status, adding the step if missing.
func setStep(srv *ferry.SourceServer, step ferry.InitiationStep, st ferry.StepStatus) {
	for i := range srv.Replication.Steps {
		if srv.Replication.Steps[i].Step == step {
			srv.Replication.Steps[i].Status = st
			return
		}
	}
	srv.Replication.Steps = append(srv.Replication.Steps, ferry.InitiationStepState{Step: step, Status: st})
}

// setStep records an initiation step (and, on failure, its error code).
func (s *Server) setStep(ctx context.Context, id string, step ferry.InitiationStep, st ferry.StepStatus, cause error) {
	_, err := s.Store.UpdateServer(ctx, id, func(srv *ferry.SourceServer) error {
		setStep(srv, step, st)
		if cause != nil {
			srv.Replication.ErrorCode, srv.Replication.ErrorMessage = ferry.FailedTo(step), cause.Error()
		}
		return nil
	})
	if err != nil {
		s.log().Warn("record initiation step", "server", id, "step", step, "err", err)
	}
}

// recordDisconnect marks the server's replication DISCONNECTED when its
// session ends. A drop (an end that dropCounts counts, with cause) goes
// into the server's drop log, and when it makes the drops reach the
// threshold the same write gives the server UNSTABLE_NETWORK: a drop
// costs no write of its own.
func (ss *session) recordDisconnect(ctx context.Context, drop bool, cause string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sent := ss.unsavedSent()
	unstable := ""
	if drop {
		unstable = ss.s.recordDrop(ss.id, ss.s.now(), cause)
	}
	marked := false
	_, err := ss.s.Store.UpdateServer(ctx, ss.id, func(srv *ferry.SourceServer) error {
		ss.addSent(srv, sent)
		srv.Replication.State = ferry.ReplicationDisconnected
		srv.Replication.LagSeconds = 0
		srv.Replication.ETASeconds = 0
		marked = markUnstable(srv, unstable)
		return nil
	})
	if err != nil {
		ss.s.log().Warn("record agent disconnect", "server", ss.id, "err", err)
		return
	}
	ss.savedSent(sent)
	if marked {
		ss.s.log().Warn("agent connection unstable; UNSTABLE_NETWORK", "server", ss.id, "err", unstable)
	}
}

func (s *Server) pollInterval() time.Duration {
	if s.PollInterval > 0 {
		return s.PollInterval
	}
	return defaultPoll
}

func (s *Server) settingsPoll() time.Duration {
	if s.SettingsPoll > 0 {
		return s.SettingsPoll
	}
	return defaultSettingsPoll
}

func (s *Server) stallAfter() time.Duration {
	if s.StallAfter > 0 {
		return s.StallAfter
	}
	return defaultStallAfter
}
