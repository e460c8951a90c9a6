package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// SnapshotInfo describes a point-in-time snapshot of a disk.
type SnapshotInfo struct {
	ID          string      `json:"id"`
	Disk        string      `json:"disk"`
	Time        time.Time   `json:"time"`
	Seq         uint64      `json:"seq"`
	Consistency Consistency `json:"consistency"`
	Size        int64       `json:"size"`
	// Keep exempts the snapshot from retention.
	Keep bool `json:"keep,omitempty"`
}

// SnapshotOptions select where a snapshot is taken.
type SnapshotOptions struct {
	// Consistency is the least consistency required: the snapshot is taken
	// at the newest durable barrier that provides it (ErrNoBarrier if none).
	// Inconsistent takes it at DurableSeq.
	Consistency Consistency
	// Seq, when not zero, takes the snapshot exactly after that record
	// (inside the journal window) and overrides Consistency.
	Seq uint64
	// Time stamps the snapshot; zero means now on the store's clock.
	Time time.Time
	// Keep exempts the snapshot from retention.
	Keep bool
}

func snapshotID(seq uint64) string { return fmt.Sprintf("%016x", seq) }

func snapshotName(disk, id string) string { return "snapshots/" + disk + "/" + id }

// Snapshot folds the disk at the chosen sequence number and records a
// snapshot of it. A snapshot at a sequence number that already has one
// returns the existing snapshot. The snapshot's id is its sequence number
// in 16 hex digits.
func (d *Disk) Snapshot(ctx context.Context, opts SnapshotOptions) (SnapshotInfo, error) {
	info, err := d.snapshot(ctx, opts)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot disk %s: %w", d.id, err)
	}
	return info, nil
}

func (d *Disk) snapshot(ctx context.Context, opts SnapshotOptions) (SnapshotInfo, error) {
	d.foldMu.Lock()
	defer d.foldMu.Unlock()
	if err := d.gone(); err != nil {
		return SnapshotInfo{}, err
	}
	seq, cons, err := d.snapshotPoint(ctx, opts)
	if err != nil {
		return SnapshotInfo{}, err
	}
	id := snapshotID(seq)
	d.mu.Lock()
	if s, ok := d.snaps[id]; ok {
		d.mu.Unlock()
		return s, nil
	}
	d.mu.Unlock()
	if err := d.foldLocked(ctx, seq); err != nil {
		return SnapshotInfo{}, err
	}
	m, err := d.root(ctx, seq)
	if err != nil {
		return SnapshotInfo{}, err
	}
	t := opts.Time
	if t.IsZero() {
		t = d.s.opts.Now()
	}
	info := SnapshotInfo{ID: id, Disk: d.id, Time: t.UTC(), Seq: seq, Consistency: cons, Size: m.size, Keep: opts.Keep}
	raw, err := json.Marshal(info)
	if err != nil {
		return SnapshotInfo{}, err
	}
	name := snapshotName(d.id, id)
	if err := d.s.be.Put(ctx, name, d.s.sl.seal(name, kindSnapshot, raw)); err != nil {
		return SnapshotInfo{}, backendErr("write snapshot", err)
	}
	d.mu.Lock()
	d.snaps[id] = info
	d.mu.Unlock()
	return info, nil
}

// snapshotPoint picks the sequence number and consistency of a snapshot.
func (d *Disk) snapshotPoint(ctx context.Context, opts SnapshotOptions) (uint64, Consistency, error) {
	head, err := d.root(ctx, d.headSeq())
	if err != nil {
		return 0, 0, err
	}
	d.j.mu.Lock()
	defer d.j.mu.Unlock()
	durable := d.j.durable
	if opts.Seq != 0 {
		if opts.Seq > durable {
			return 0, 0, fmt.Errorf("sequence number %d is not durable yet: %w", opts.Seq, ErrOutsideWindow)
		}
		cons := Inconsistent
		switch opts.Seq {
		case head.appBarrier:
			cons = AppConsistent
		case head.crashBarrier:
			cons = CrashConsistent
		}
		for _, r := range d.j.rangeLocked(opts.Seq-1, opts.Seq) {
			if r.typ == recBarrier {
				cons = Consistency(r.flag)
			}
		}
		return opts.Seq, cons, nil
	}
	if opts.Consistency == Inconsistent {
		cons := Inconsistent
		if recs := d.j.rangeLocked(durable-1, durable); len(recs) == 1 && recs[0].typ == recBarrier {
			cons = Consistency(recs[0].flag)
		}
		return durable, cons, nil
	}
	recs := d.j.rangeLocked(head.seq, durable)
	for i := len(recs) - 1; i >= 0; i-- {
		if r := recs[i]; r.typ == recBarrier && Consistency(r.flag) >= opts.Consistency {
			return r.seq, Consistency(r.flag), nil
		}
	}
	if opts.Consistency == AppConsistent {
		if head.appBarrier != 0 {
			return head.appBarrier, AppConsistent, nil
		}
	} else if head.crashBarrier != 0 {
		if head.crashBarrier == head.appBarrier {
			return head.crashBarrier, AppConsistent, nil
		}
		return head.crashBarrier, CrashConsistent, nil
	}
	return 0, 0, ErrNoBarrier
}

// Snapshots returns the disk's snapshots, oldest first.
func (d *Disk) Snapshots() []SnapshotInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]SnapshotInfo, 0, len(d.snaps))
	for _, s := range d.snaps {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out
}

// OpenSnapshot returns a Reader of snapshot id (ErrNotFound if there is none).
func (d *Disk) OpenSnapshot(ctx context.Context, id string) (*Reader, error) {
	d.mu.Lock()
	s, ok := d.snaps[id]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("snapshot %s of disk %s: %w", id, d.id, ErrNotFound)
	}
	return d.OpenAt(ctx, s.Seq)
}

// DeleteSnapshot deletes snapshot id; its chunks are freed by the next GC.
// Deleting a missing snapshot is an error wrapping ErrNotFound.
func (d *Disk) DeleteSnapshot(ctx context.Context, id string) error {
	d.foldMu.Lock()
	defer d.foldMu.Unlock()
	if err := d.gone(); err != nil {
		return err
	}
	if err := d.deleteSnapshotLocked(ctx, id); err != nil {
		return err
	}
	return d.pruneMapsLocked(ctx)
}

func (d *Disk) deleteSnapshotLocked(ctx context.Context, id string) error {
	d.mu.Lock()
	_, ok := d.snaps[id]
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("delete snapshot %s of disk %s: %w", id, d.id, ErrNotFound)
	}
	if err := d.s.be.Delete(ctx, snapshotName(d.id, id)); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", id, err)
	}
	d.mu.Lock()
	delete(d.snaps, id)
	d.mu.Unlock()
	return nil
}

func (d *Disk) loadSnapshots(ctx context.Context) error {
	var names []string
	err := d.s.be.List(ctx, "snapshots/"+d.id+"/", func(name string, _ int64) error {
		names = append(names, name)
		return nil
	})
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	for _, name := range names {
		info, err := d.s.readSnapshot(ctx, name)
		if err != nil {
			return err
		}
		if info.Disk != d.id || name != snapshotName(d.id, info.ID) {
			return corrupt(name, errors.New("snapshot does not match its name"))
		}
		d.snaps[info.ID] = info
	}
	return nil
}

func (s *Store) readSnapshot(ctx context.Context, name string) (SnapshotInfo, error) {
	raw, err := s.getSealed(ctx, name, kindSnapshot)
	if err != nil {
		return SnapshotInfo{}, err
	}
	var info SnapshotInfo
	if err := json.Unmarshal(raw, &info); err != nil {
		return SnapshotInfo{}, corrupt(name, err)
	}
	if !strings.HasPrefix(name, "snapshots/") || info.ID != snapshotID(info.Seq) {
		return SnapshotInfo{}, corrupt(name, errors.New("snapshot id does not match its sequence number"))
	}
	return info, nil
}

// RetentionRule keeps the newest snapshot of every Every-long interval
// (aligned to the Unix epoch, UTC) for snapshots younger than For.
type RetentionRule struct {
	Every time.Duration
	For   time.Duration
}

// RetentionPolicy is a set of rules; a snapshot any rule keeps is kept,
// as are the newest snapshot and snapshots marked Keep.
type RetentionPolicy struct {
	Rules []RetentionRule
}

// DefaultRetention keeps a snapshot every 10 minutes for an hour, hourly
// for a day and daily for a week.
func DefaultRetention() RetentionPolicy {
	return RetentionPolicy{Rules: []RetentionRule{
		{Every: 10 * time.Minute, For: time.Hour},
		{Every: time.Hour, For: 24 * time.Hour},
		{Every: 24 * time.Hour, For: 7 * 24 * time.Hour},
	}}
}

// Select splits snaps into those the policy keeps at now and those it drops.
func (p RetentionPolicy) Select(snaps []SnapshotInfo, now time.Time) (keep, drop []SnapshotInfo) {
	sorted := append([]SnapshotInfo(nil), snaps...)
	sort.Slice(sorted, func(i, j int) bool {
		if !sorted[i].Time.Equal(sorted[j].Time) {
			return sorted[i].Time.After(sorted[j].Time)
		}
		return sorted[i].Seq > sorted[j].Seq
	})
	kept := make([]bool, len(sorted))
	for i, s := range sorted {
		if i == 0 || s.Keep || s.Time.After(now) {
			kept[i] = true
		}
	}
	for _, r := range p.Rules {
		if r.Every <= 0 {
			continue
		}
		seen := map[int64]bool{}
		for i, s := range sorted {
			if now.Sub(s.Time) >= r.For {
				continue
			}
			b := s.Time.UnixNano() / int64(r.Every)
			if s.Time.UnixNano() < 0 {
				b--
			}
			if !seen[b] {
				seen[b] = true
				kept[i] = true
			}
		}
	}
	for i, s := range sorted {
		if kept[i] {
			keep = append(keep, s)
		} else {
			drop = append(drop, s)
		}
	}
	return keep, drop
}

// SetRetention sets the disk's retention policy (the store's default
// otherwise). It is not persisted: the control plane sets it after Open.
func (d *Disk) SetRetention(p RetentionPolicy) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.retention = p
}

// ApplyRetention deletes the snapshots the disk's retention policy drops
// at now, except those named in keep (in use, e.g. by a launched
// instance), and returns them.
func (d *Disk) ApplyRetention(ctx context.Context, now time.Time, keep ...string) ([]SnapshotInfo, error) {
	d.foldMu.Lock()
	defer d.foldMu.Unlock()
	if err := d.gone(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	p := d.retention
	d.mu.Unlock()
	_, drop := p.Select(d.Snapshots(), now)
	var done []SnapshotInfo
	for _, s := range drop {
		if slices.Contains(keep, s.ID) {
			continue
		}
		if err := d.deleteSnapshotLocked(ctx, s.ID); err != nil {
			return done, fmt.Errorf("apply retention: %w", err)
		}
		done = append(done, s)
	}
	if err := d.pruneMapsLocked(ctx); err != nil {
		return done, fmt.Errorf("apply retention: %w", err)
	}
	return done, nil
}
