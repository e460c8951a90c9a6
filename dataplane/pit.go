package dataplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/replica"
)

// pitStates are the lifecycle states in which a server's replica has a
// finished initial sync, so that point-in-time snapshots mean something.
var pitStates = []ferry.LifecycleState{
	ferry.LifecycleReadyForTest, ferry.LifecycleTesting, ferry.LifecycleReadyForCutover,
	ferry.LifecycleCuttingOver, ferry.LifecycleCutover,
}

// Retention converts a server's point-in-time policy (its replication
// settings, kept in the metadata store) into the replica store's rules.
// An empty policy is the default one.
func Retention(rules []ferry.RetentionRule) replica.RetentionPolicy {
	if len(rules) == 0 {
		rules = ferry.DefaultPointInTimePolicy
	}
	var p replica.RetentionPolicy
	for _, r := range rules {
		p.Rules = append(p.Rules, replica.RetentionRule{
			Every: time.Duration(r.IntervalMinutes) * time.Minute,
			For:   time.Duration(r.KeepMinutes) * time.Minute,
		})
	}
	return p
}

// PointInTimeResult says what one pass of the point-in-time schedule did.
type PointInTimeResult struct {
	Taken   int // snapshots taken
	Deleted int // snapshots retention deleted
}

// PointInTime runs one pass of the point-in-time schedule over every
// server whose replica this replication server holds: each disk whose
// newest snapshot is older than the policy's shortest interval gets a
// crash-consistent snapshot at its newest durable barrier, then the
// policy's retention deletes what it no longer keeps. The snapshots a
// live launched instance was started from are never deleted (its disks
// may be re-opened after a restart); the newest is always kept. Errors of
// one server do not stop the others; they are joined in the result.
func (s *Server) PointInTime(ctx context.Context) (PointInTimeResult, error) {
	var res PointInTimeResult
	if s.Replica == nil {
		return res, nil
	}
	var errs []error
	f := ferry.ServerFilter{Lifecycle: pitStates, Limit: ferry.MaxPageSize}
	for {
		page, next, err := s.Store.ListServers(ctx, f)
		if err != nil {
			return res, fmt.Errorf("point-in-time snapshots: list servers: %w", err)
		}
		for _, srv := range page {
			if err := s.pointInTime(ctx, srv, &res); err != nil {
				errs = append(errs, err)
			}
		}
		if next == "" {
			break
		}
		f.After = next
	}
	return res, errors.Join(errs...)
}

func (s *Server) pointInTime(ctx context.Context, srv *ferry.SourceServer, res *PointInTimeResult) error {
	policy := Retention(srv.ReplicationSetup.PointInTime)
	every := time.Duration(0)
	for _, r := range policy.Rules {
		if r.Every > 0 && (every == 0 || r.Every < every) {
			every = r.Every
		}
	}
	var inUse []string
	if li := srv.Launched; li != nil && li.TerminatedAt.IsZero() {
		for _, id := range li.Snapshots {
			inUse = append(inUse, id)
		}
	}
	now := s.now()
	var errs []error
	taken := false
	for _, sd := range srv.Disks {
		d, err := s.Replica.Disk(DiskID(srv.ID, sd.Name))
		if err != nil {
			continue // held by another replication server, or not created yet
		}
		d.SetRetention(policy)
		snaps := d.Snapshots()
		newest := time.Time{}
		for _, sn := range snaps {
			if sn.Time.After(newest) {
				newest = sn.Time
			}
		}
		if every > 0 && (newest.IsZero() || now.Sub(newest) >= every) {
			info, err := d.Snapshot(ctx, replica.SnapshotOptions{Consistency: replica.CrashConsistent, Time: now})
			switch {
			case errors.Is(err, replica.ErrNoBarrier):
				// Nothing consistent yet: the next pass tries again.
			case err != nil:
				errs = append(errs, fmt.Errorf("point-in-time snapshot of server %s disk %s: %w", srv.ID, sd.Name, err))
			case !slices.ContainsFunc(snaps, func(o replica.SnapshotInfo) bool { return o.ID == info.ID }):
				// A new point (an unchanged disk returns its newest one).
				res.Taken++
				taken = true
				s.log().Info("point-in-time snapshot", "server", srv.ID, "disk", sd.Name, "snapshot", info.ID, "seq", info.Seq)
			}
		}
		dropped, err := d.ApplyRetention(ctx, now, inUse...)
		res.Deleted += len(dropped)
		for _, sn := range dropped {
			s.log().Info("retention deleted a snapshot", "server", srv.ID, "disk", sd.Name, "snapshot", sn.ID, "taken", sn.Time)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("retention of server %s disk %s: %w", srv.ID, sd.Name, err))
		}
	}
	if taken {
		if _, err := s.Store.UpdateServer(ctx, srv.ID, func(srv *ferry.SourceServer) error {
			srv.Replication.LastSnapshotAt = now
			return nil
		}); err != nil {
			errs = append(errs, fmt.Errorf("record snapshot time of server %s: %w", srv.ID, err))
		}
	}
	return errors.Join(errs...)
}

// RunPointInTime runs the point-in-time schedule every interval (a
// minute when 0) until ctx ends, logging what fails.
func (s *Server) RunPointInTime(ctx context.Context, interval time.Duration) {
	s.every(ctx, interval, "point-in-time snapshots", func(ctx context.Context) error {
		_, err := s.PointInTime(ctx)
		return err
	})
}

// every runs pass every interval (a minute when 0) until ctx ends,
// logging a failed pass under what.
func (s *Server) every(ctx context.Context, interval time.Duration, what string, pass func(context.Context) error) {
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := pass(ctx); err != nil && ctx.Err() == nil {
			s.log().Warn(what, "err", err)
		}
	}
}
