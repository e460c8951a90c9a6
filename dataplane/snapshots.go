package dataplane

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/protocol"
	"github.com/ferrymigrate/ferry/replica"
)

// publish makes a session findable for snapshots once its disks are open.
func (s *Server) publish(id string, ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.sessions[id]; a != nil {
		a.sess = ss
	}
}

func (s *Server) session(id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.sessions[id]; a != nil {
		return a.sess
	}
	return nil
}

// received notes the highest sequence number read for a disk.
func (ss *session) received(disk uint16, seq uint64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if int(disk) < len(ss.lastRecv) && seq > ss.lastRecv[disk] {
		ss.lastRecv[disk] = seq
	}
}

// ErrNotConnected means a drained snapshot needs the server's agent
// connected, and it is not.
var ErrNotConnected = errors.New("the agent is not connected")

// flushPoint is the barrier that answered a FLUSH.
type flushPoint struct {
	id   uint32
	seq  uint64
	cons uint8
}

// ErrNotAppConsistent means the agent could not give an app-consistent
// point: nothing could be frozen, or a disk did not drain within the
// agent's 2 s freeze limit.
var ErrNotAppConsistent = errors.New("the agent could not reach an app-consistent point")

// drainPoint asks the agent for a drained consistency point (FLUSH) and
// waits until every disk has the barrier that answers it (BARRIER with the
// FLUSH's ID): the agent sends that barrier only once it has sent every
// write completed before the FLUSH.
// With app, the FLUSH asks for an app-consistent point, and a disk whose
// barrier came back crash-consistent fails it with ErrNotAppConsistent.
func (ss *session) drainPoint(ctx context.Context, app bool) (map[string]uint64, error) {
	ss.mu.Lock()
	// FLUSH ids are unique across sessions and server restarts, so a
	// barrier answering a FLUSH of an earlier session (the agent may still
	// send it after reconnecting) is never taken for this one's answer.
	id := newFlushID()
	ss.mu.Unlock()
	flush := &protocol.Flush{ID: id}
	if app {
		flush.Consistency = protocol.AppConsistent
	}
	if err := ss.send(flush); err != nil {
		return nil, fmt.Errorf("ask the agent for a drained point: %w", err)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ss.mu.Lock()
		points := map[string]uint64{}
		var crash []string
		for i, d := range ss.disks {
			if p := ss.flushPoints[i]; p.id == id {
				points[d.name] = p.seq
				if p.cons != protocol.AppConsistent {
					crash = append(crash, d.name)
				}
			}
		}
		done := len(points) == len(ss.disks)
		ss.mu.Unlock()
		if done {
			if app && len(crash) > 0 {
				return nil, fmt.Errorf("disks %v: %w (see the agent's log; the crash-consistent point is in the replica)", crash, ErrNotAppConsistent)
			}
			return points, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the backlog to drain: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// SnapshotRequest says what kind of snapshot SnapshotWith takes.
type SnapshotRequest struct {
	// Drain waits until the agent has sent everything it tracked (a
	// cutover's final sync), which needs the agent connected.
	Drain bool
	// App asks the agent for an app-consistent point: it freezes the
	// file systems on the disks (at most 2 s), drains and sends the
	// barrier while they are frozen. It implies Drain.
	App bool
}

// Snapshot takes a crash-consistent snapshot of every replicated disk of
// a source server and returns disk name → snapshot id; replication goes
// on. Without drain it takes the newest consistent point already in the
// replica; with drain it first waits until the agent has sent everything
// it tracked (a cutover's final sync), which needs the agent connected.
func (s *Server) Snapshot(ctx context.Context, serverID string, drain bool) (map[string]string, error) {
	return s.SnapshotWith(ctx, serverID, SnapshotRequest{Drain: drain})
}

// SnapshotApp takes an app-consistent snapshot of every disk of a server
// (see SnapshotRequest.App).
func (s *Server) SnapshotApp(ctx context.Context, serverID string) (map[string]string, error) {
	return s.SnapshotWith(ctx, serverID, SnapshotRequest{App: true})
}

// SnapshotWith takes a snapshot of every replicated disk of a source
// server as req says and returns disk name → snapshot id. An app-consistent
// request fails with an error wrapping ErrNotConnected when the agent is
// not connected, or ErrNotAppConsistent when it could not freeze and drain
// in time.
func (s *Server) SnapshotWith(ctx context.Context, serverID string, req SnapshotRequest) (map[string]string, error) {
	if s.Replica == nil {
		return nil, errors.New("this replication server has no replica store")
	}
	srv, err := s.Store.Server(ctx, serverID)
	if err != nil {
		return nil, err
	}
	if len(srv.Disks) == 0 {
		return nil, fmt.Errorf("server %s has no disks", serverID)
	}
	var points map[string]uint64
	if req.Drain || req.App {
		ss := s.session(serverID)
		if ss == nil {
			if req.App {
				return nil, fmt.Errorf("app-consistent snapshot of server %s: %w", serverID, ErrNotConnected)
			}
			return nil, fmt.Errorf("drain server %s: %w (skip the drain to use the newest consistent point)", serverID, ErrNotConnected)
		}
		if points, err = ss.drainPoint(ctx, req.App); err != nil {
			return nil, err
		}
	}
	out := map[string]string{}
	for _, sd := range srv.Disks {
		d, err := s.Replica.Disk(DiskID(serverID, sd.Name))
		if err != nil {
			return nil, fmt.Errorf("disk %s has no replica yet: %w", sd.Name, err)
		}
		opts := replica.SnapshotOptions{Consistency: replica.CrashConsistent}
		if seq, ok := points[sd.Name]; ok {
			opts = replica.SnapshotOptions{Seq: seq}
		}
		info, err := d.Snapshot(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("snapshot disk %s: %w", sd.Name, err)
		}
		if req.App && info.Consistency != replica.AppConsistent {
			return nil, fmt.Errorf("snapshot disk %s is %s: %w", sd.Name, info.Consistency, ErrNotAppConsistent)
		}
		out[sd.Name] = info.ID
	}
	now := s.now()
	if _, err := s.Store.UpdateServer(ctx, serverID, func(srv *ferry.SourceServer) error {
		srv.Replication.LastSnapshotAt = now
		return nil
	}); err != nil {
		s.log().Warn("record snapshot time", "server", serverID, "err", err)
	}
	return out, nil
}

// Latest returns the newest existing snapshot of every disk of a server.
func (s *Server) Latest(ctx context.Context, serverID string) (map[string]string, error) {
	if s.Replica == nil {
		return nil, errors.New("this replication server has no replica store")
	}
	srv, err := s.Store.Server(ctx, serverID)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, sd := range srv.Disks {
		d, err := s.Replica.Disk(DiskID(serverID, sd.Name))
		if err != nil {
			return nil, fmt.Errorf("disk %s has no replica yet: %w", sd.Name, err)
		}
		var best *replica.SnapshotInfo
		for _, sn := range d.Snapshots() {
			if best == nil || sn.Seq > best.Seq {
				sn := sn
				best = &sn
			}
		}
		if best == nil {
			return nil, fmt.Errorf("disk %s has no snapshot yet", sd.Name)
		}
		out[sd.Name] = best.ID
	}
	return out, nil
}

// Pick returns existing snapshots of every disk of a server: those named
// in ids (disk name → snapshot id; the key "" names the only disk of a
// one-disk server), or else each disk's newest snapshot taken at or
// before at. It implements jobs.Snapshotter.
func (s *Server) Pick(ctx context.Context, serverID string, ids map[string]string, at time.Time) (map[string]string, error) {
	if s.Replica == nil {
		return nil, errors.New("this replication server has no replica store")
	}
	srv, err := s.Store.Server(ctx, serverID)
	if err != nil {
		return nil, err
	}
	if len(ids) > 0 {
		ids = maps.Clone(ids)
		if id, ok := ids[""]; ok {
			if len(srv.Disks) != 1 || len(ids) != 1 {
				return nil, fmt.Errorf("server %s has %d disks: name each disk's snapshot (DISK=ID)", serverID, len(srv.Disks))
			}
			ids = map[string]string{srv.Disks[0].Name: id}
		}
		for name := range ids {
			if !slices.ContainsFunc(srv.Disks, func(d ferry.Disk) bool { return d.Name == name }) {
				return nil, fmt.Errorf("server %s has no disk %q", serverID, name)
			}
		}
	}
	out := map[string]string{}
	for _, sd := range srv.Disks {
		d, err := s.Replica.Disk(DiskID(serverID, sd.Name))
		if err != nil {
			return nil, fmt.Errorf("disk %s has no replica yet: %w", sd.Name, err)
		}
		snaps := d.Snapshots()
		if len(ids) > 0 {
			id, ok := ids[sd.Name]
			if !ok {
				return nil, fmt.Errorf("no snapshot chosen for disk %s: name one for every disk", sd.Name)
			}
			if !slices.ContainsFunc(snaps, func(sn replica.SnapshotInfo) bool { return sn.ID == id }) {
				return nil, fmt.Errorf("disk %s has no snapshot %q", sd.Name, id)
			}
			out[sd.Name] = id
			continue
		}
		var best *replica.SnapshotInfo
		for _, sn := range snaps {
			if !sn.Time.After(at) && (best == nil || sn.Time.After(best.Time) || sn.Time.Equal(best.Time) && sn.Seq > best.Seq) {
				best = &sn
			}
		}
		if best == nil {
			return nil, fmt.Errorf("disk %s has no snapshot taken at or before %s", sd.Name, at.UTC().Format(time.RFC3339))
		}
		out[sd.Name] = best.ID
	}
	return out, nil
}

// List returns every snapshot of every replicated disk of a server, oldest
// first per disk.
func (s *Server) List(ctx context.Context, serverID string) ([]api.Snapshot, error) {
	if s.Replica == nil {
		return nil, errors.New("this replication server has no replica store")
	}
	srv, err := s.Store.Server(ctx, serverID)
	if err != nil {
		return nil, err
	}
	out := []api.Snapshot{}
	for _, sd := range srv.Disks {
		d, err := s.Replica.Disk(DiskID(serverID, sd.Name))
		if errors.Is(err, replica.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		snaps := d.Snapshots()
		sort.Slice(snaps, func(i, j int) bool { return snaps[i].Seq < snaps[j].Seq })
		for _, sn := range snaps {
			out = append(out, api.Snapshot{Disk: sd.Name, ID: sn.ID, Time: sn.Time, Seq: sn.Seq, Consistency: sn.Consistency.String(), SizeBytes: sn.Size})
		}
	}
	return out, nil
}

var flushSeq atomic.Uint32

func init() {
	var b [4]byte
	_, _ = rand.Read(b[:])
	flushSeq.Store(binary.LittleEndian.Uint32(b[:]))
}

// newFlushID returns a FLUSH id no other FLUSH of this process has, and
// that a FLUSH of an earlier process is unlikely to have had (random
// start); never 0, which means "no FLUSH".
func newFlushID() uint32 {
	for {
		if id := flushSeq.Add(1); id != 0 {
			return id
		}
	}
}
