package dataplane

import (
	"context"
	"errors"
	"fmt"
	"sort"
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

// drainPoint asks the agent for a drained consistency point (FLUSH) and
// waits until every disk has a barrier sent after it: the agent sends that
// barrier only once it has sent every write completed before the FLUSH.
func (ss *session) drainPoint(ctx context.Context) (map[string]uint64, error) {
	ss.mu.Lock()
	target := append([]uint64(nil), ss.lastRecv...)
	ss.flushes++
	id := ss.flushes
	ss.mu.Unlock()
	if err := ss.send(&protocol.Flush{ID: id}); err != nil {
		return nil, fmt.Errorf("ask the agent for a drained point: %w", err)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ss.mu.Lock()
		points := map[string]uint64{}
		for i, d := range ss.disks {
			if b := ss.lastBarrier[i]; b > target[i] {
				points[d.name] = b
			}
		}
		done := len(points) == len(ss.disks)
		ss.mu.Unlock()
		if done {
			return points, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the backlog to drain: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// Snapshot takes a crash-consistent snapshot of every replicated disk of
// a source server and returns disk name → snapshot id; replication goes
// on. Without drain it takes the newest consistent point already in the
// replica; with drain it first waits until the agent has sent everything
// it tracked (a cutover's final sync), which needs the agent connected.
func (s *Server) Snapshot(ctx context.Context, serverID string, drain bool) (map[string]string, error) {
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
	if drain {
		ss := s.session(serverID)
		if ss == nil {
			return nil, fmt.Errorf("drain server %s: %w (skip the drain to use the newest consistent point)", serverID, ErrNotConnected)
		}
		if points, err = ss.drainPoint(ctx); err != nil {
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
