package connector

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry/protocol"
)

// bitmapGranularity is the dirty bitmaps' granularity in bytes.
const bitmapGranularity = 4096

// Mode is how a run copies a disk.
type Mode string

// Run modes.
const (
	// ModeFull copies what base:allocation reports as data (first run).
	ModeFull Mode = "FULL"
	// ModeIncremental copies what the dirty bitmap reports.
	ModeIncremental Mode = "INCREMENTAL"
	// ModeRescan compares every block with the replica's hashes and sends
	// the blocks that differ (change tracking had a gap).
	ModeRescan Mode = "RESCAN"
)

// DiskResult is what one run did to one disk.
type DiskResult struct {
	Name string `json:"name"`
	Mode Mode   `json:"mode"`
	// TrackedBytes is what the bitmap (or base:allocation) said to read.
	TrackedBytes int64 `json:"tracked_bytes"`
	// ReadBytes were read from the point in time over NBD.
	ReadBytes int64 `json:"read_bytes"`
	// SentBytes are WRITE payload bytes sent (after compression).
	SentBytes int64 `json:"sent_bytes"`
	// RawSentBytes are the bytes those WRITEs carry uncompressed.
	RawSentBytes int64 `json:"raw_sent_bytes"`
	// SnapshotSeq is the seq of the SNAPSHOT that ended the run.
	SnapshotSeq uint64 `json:"snapshot_seq"`
}

// RunResult is what one run did.
type RunResult struct {
	Start time.Time `json:"start"`
	// PointAt is about when the point in time was taken (just after the
	// fleecing transaction).
	PointAt time.Time    `json:"point_at"`
	End     time.Time    `json:"end"`
	Disks   []DiskResult `json:"disks"`
	// Flushes are the ids of the server's FLUSHes this run answered.
	Flushes []uint32 `json:"flushes,omitempty"`
}

// SentBytes is the WRITE payload of the whole run.
func (r *RunResult) SentBytes() int64 {
	var n int64
	for _, d := range r.Disks {
		n += d.SentBytes
	}
	return n
}

// plan is one disk's part in a run.
type plan struct {
	i      int // index in the link's disks
	disk   Disk
	ds     *diskState
	mode   Mode
	olds   []string // bitmaps whose union covers the changes since the last acked point
	fleece string   // fleecing node
	file   string   // its image file
	job    string   // its backup job
	export string   // NBD export name
	tmp    string   // temporary merged bitmap to export (incremental)
	// created says the fleecing transaction ran: the bitmap "next" exists.
	created bool
	res     DiskResult
}

// RunOptions tune one run.
type RunOptions struct {
	// Keep, when not 0, asks the server to keep only the Keep newest
	// snapshots of each disk once this run's are taken.
	Keep int
}

// Run replicates one point in time of every disk of the VM: fleece,
// export over NBD, send the changed extents, snapshot, clean up. It
// returns after the server acknowledged the snapshots as durable.
func (s *Source) Run(ctx context.Context) (*RunResult, error) {
	return s.RunWith(ctx, RunOptions{})
}

// RunWith is Run with options. A run also answers every FLUSH the server
// sent before it took its point in time (RunResult.Flushes).
func (s *Source) RunWith(ctx context.Context, o RunOptions) (*RunResult, error) {
	if o.Keep < 0 {
		return nil, fmt.Errorf("run: keep %d: want 0 (all) or more", o.Keep)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	res := &RunResult{Start: time.Now()}
	if _, err := s.discoverLocked(ctx); err != nil {
		return nil, err
	}
	if len(s.facts.Disks) == 0 {
		return nil, errors.New("run: the VM has no disks")
	}
	if s.st == nil {
		st, err := loadVMState(s.StateDir)
		if err != nil {
			return nil, err
		}
		s.st = st
	}
	if err := s.ensureLinkLocked(ctx); err != nil {
		return nil, err
	}
	nodes, err := namedNodes(ctx, s.mon)
	if err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	s.st.Gen++
	next := fmt.Sprintf("%s%d", fleecePrefix, s.st.Gen)
	var plans []*plan
	for i, d := range s.disks {
		p := &plan{i: i, disk: d, ds: s.st.disk(d.Name)}
		if err := s.planDisk(ctx, p, nodes[d.Node].Bitmaps); err != nil {
			return nil, err
		}
		p.ds.Next = next
		p.fleece = fmt.Sprintf("%sfleece-%d", fleecePrefix, i)
		p.job = fmt.Sprintf("%sjob-%d", fleecePrefix, i)
		p.export = fmt.Sprintf("%sexport-%d", fleecePrefix, i)
		p.file = filepath.Join(s.WorkDir, p.fleece+".qcow2")
		p.res = DiskResult{Name: d.Name, Mode: p.mode}
		plans = append(plans, p)
	}
	// Next is saved before QEMU creates it: after a crash the union of
	// the old bitmap and Next still covers every write.
	if err := s.st.save(s.StateDir); err != nil {
		return nil, err
	}

	// Every FLUSH that arrived before the point in time is answered by it.
	flushes := s.takeFlushes()
	cleanup, err := s.fleece(ctx, plans, next)
	defer func() {
		if cleanup != nil {
			cleanup(context.WithoutCancel(ctx))
		}
	}()
	if err != nil {
		s.giveBackFlushes(flushes)
		s.settleBitmaps(context.WithoutCancel(ctx), plans, next, false)
		return nil, err
	}
	pointAt := time.Now()
	sock := filepath.Join(s.WorkDir, "nbd.sock")
	err = s.copyAll(ctx, plans, sock)
	if err == nil {
		err = s.snapshotAll(ctx, plans, o.Keep, flushes)
	}
	if err != nil {
		s.giveBackFlushes(flushes)
	}
	if cleanup != nil {
		cleanup(context.WithoutCancel(ctx))
		cleanup = nil
	}
	s.settleBitmaps(context.WithoutCancel(ctx), plans, next, err == nil)
	if err != nil {
		return nil, err
	}
	s.smu.Lock()
	s.pointAt = pointAt
	s.smu.Unlock()
	for _, p := range plans {
		res.Disks = append(res.Disks, p.res)
	}
	for _, f := range flushes {
		res.Flushes = append(res.Flushes, f.ID)
	}
	res.PointAt = pointAt
	res.End = time.Now()
	return res, nil
}

// planDisk chooses the disk's mode from its bitmaps and drops bitmaps
// left by earlier crashed runs that the state no longer needs.
func (s *Source) planDisk(ctx context.Context, p *plan, bitmaps []bitmapInfo) error {
	have := map[string]bitmapInfo{}
	for _, b := range bitmaps {
		if !strings.HasPrefix(b.Name, fleecePrefix) {
			continue
		}
		if b.Name != p.ds.Bitmap && b.Name != p.ds.Next {
			if err := s.mon.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": p.disk.Node, "name": b.Name}, nil); err != nil {
				return fmt.Errorf("remove stale bitmap %s of %s: %w", b.Name, p.disk.Name, err)
			}
			continue
		}
		have[b.Name] = b
	}
	inconsistent := false
	for _, name := range []string{p.ds.Bitmap, p.ds.Next} {
		if b, ok := have[name]; ok && name != "" {
			p.olds = append(p.olds, name)
			inconsistent = inconsistent || b.Inconsistent
		}
	}
	_, haveBase := have[p.ds.Bitmap]
	switch {
	case !p.ds.Synced:
		p.mode = ModeFull
	case p.ds.NeedRescan:
		p.mode = ModeRescan
	case p.ds.Bitmap == "" || !haveBase:
		s.log().Warn("dirty bitmap missing (QEMU restarted without it, or the image cannot persist bitmaps); comparing the whole disk by hash",
			"server", s.ServerID, "disk", p.disk.Name, "bitmap", p.ds.Bitmap)
		p.mode = ModeRescan
	case inconsistent:
		s.log().Warn("dirty bitmap inconsistent (QEMU did not shut down cleanly); comparing the whole disk by hash",
			"server", s.ServerID, "disk", p.disk.Name, "bitmap", p.ds.Bitmap)
		p.mode = ModeRescan
	default:
		p.mode = ModeIncremental
	}
	if p.mode == ModeRescan {
		p.ds.NeedRescan = true
	}
	return nil
}

// fleece creates the point in time and its NBD exports; the returned
// cleanup (non-nil once anything was created) removes them.
func (s *Source) fleece(ctx context.Context, plans []*plan, next string) (func(context.Context), error) {
	owner, err := s.prepareWorkDir(ctx)
	if err != nil {
		return nil, fmt.Errorf("fleece: %w", err)
	}
	var undo []func(context.Context)
	cleanup := func(ctx context.Context) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i](ctx)
		}
		undo = nil
	}
	qemuImg := s.QemuImg
	if qemuImg == "" {
		qemuImg = "qemu-img"
	}
	for _, p := range plans {
		out, err := exec.CommandContext(ctx, qemuImg, "create", "-q", "-f", "qcow2", p.file, fmt.Sprint(p.disk.Size)).CombinedOutput()
		if err != nil {
			return cleanup, fmt.Errorf("fleece %s: qemu-img create: %v: %s", p.disk.Name, err, strings.TrimSpace(string(out)))
		}
		undo = append(undo, func(context.Context) { os.Remove(p.file) })
		if owner != nil {
			// QEMU opens the image itself, as its own user.
			if err := os.Chown(p.file, owner.uid, owner.gid); err != nil {
				return cleanup, fmt.Errorf("fleece %s: %w", p.disk.Name, err)
			}
		}
		if err := s.mon.Execute(ctx, "blockdev-add", map[string]any{
			"driver": "qcow2", "node-name": p.fleece, "backing": p.disk.Node,
			"file": map[string]any{"driver": "file", "filename": p.file},
		}, nil); err != nil {
			return cleanup, fmt.Errorf("fleece %s: %w", p.disk.Name, err)
		}
		undo = append(undo, func(ctx context.Context) {
			if err := s.mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": p.fleece}, nil); err != nil {
				s.log().Warn("remove fleecing node", "node", p.fleece, "err", err)
			}
		})
	}
	// One transaction: the backup jobs start copy-before-write (the point
	// in time), the old bitmaps stop recording and the new one starts, so
	// no write falls between them.
	var actions []map[string]any
	act := func(typ string, data map[string]any) {
		actions = append(actions, map[string]any{"type": typ, "data": data})
	}
	for _, p := range plans {
		act("blockdev-backup", map[string]any{"device": p.disk.Node, "target": p.fleece, "sync": "none", "job-id": p.job})
		for _, b := range p.olds {
			act("block-dirty-bitmap-disable", map[string]any{"node": p.disk.Node, "name": b})
		}
		// Only qcow2 stores bitmaps in the image; on another format (raw)
		// the bitmap lives as long as the QEMU process, and a restart makes
		// the next run a RESCAN (bitmap missing).
		// 4 KiB granularity, Ferry's tracking block: QEMU's default (the
		// qcow2 cluster, 64 KiB) made a run after 1 % of 4 KiB blocks
		// changed at random send 15 % of the disk (ferry bench connector).
		act("block-dirty-bitmap-add", map[string]any{"node": p.disk.Node, "name": next, "persistent": p.disk.Format == "qcow2", "granularity": bitmapGranularity})
		if p.mode == ModeIncremental {
			p.tmp = fleecePrefix + "export-" + next
			act("block-dirty-bitmap-add", map[string]any{"node": p.disk.Node, "name": p.tmp, "persistent": false, "disabled": true, "granularity": bitmapGranularity})
			act("block-dirty-bitmap-merge", map[string]any{"node": p.disk.Node, "target": p.tmp, "bitmaps": p.olds})
		}
	}
	if err := s.mon.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		return cleanup, fmt.Errorf("fleece: %w", err)
	}
	for _, p := range plans {
		p.created = true
	}
	for _, p := range plans {
		undo = append(undo, func(ctx context.Context) { s.cancelJob(ctx, p.job) })
	}
	sock := filepath.Join(s.WorkDir, "nbd.sock")
	os.Remove(sock)
	if err := s.mon.Execute(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}}, nil); err != nil {
		return cleanup, fmt.Errorf("fleece: export over NBD: %w", err)
	}
	undo = append(undo, func(ctx context.Context) {
		if err := s.mon.Execute(ctx, "nbd-server-stop", nil, nil); err != nil {
			s.log().Warn("stop NBD server", "err", err)
		}
		os.Remove(sock)
	})
	for _, p := range plans {
		args := map[string]any{"type": "nbd", "id": p.export, "node-name": p.fleece, "name": p.export, "writable": false}
		if p.tmp != "" {
			args["bitmaps"] = []string{p.tmp}
		}
		if err := s.mon.Execute(ctx, "block-export-add", args, nil); err != nil {
			return cleanup, fmt.Errorf("fleece %s: export: %w", p.disk.Name, err)
		}
		undo = append(undo, func(ctx context.Context) { s.deleteExport(ctx, p.export) })
	}
	return cleanup, nil
}

// cancelJob cancels a fleecing backup job and waits until it is gone.
func (s *Source) cancelJob(ctx context.Context, job string) {
	if err := s.mon.Execute(ctx, "block-job-cancel", map[string]any{"device": job}, nil); err != nil {
		s.log().Warn("cancel fleecing job", "job", job, "err", err)
		return
	}
	if err := waitGone(ctx, s.mon, "query-block-jobs", "device", job); err != nil {
		s.log().Warn("wait for fleecing job to end", "job", job, "err", err)
	}
}

// deleteExport removes an NBD export and waits until QEMU has closed it.
func (s *Source) deleteExport(ctx context.Context, id string) {
	if err := s.mon.Execute(ctx, "block-export-del", map[string]any{"id": id, "mode": "hard"}, nil); err != nil {
		s.log().Warn("remove NBD export", "export", id, "err", err)
		return
	}
	if err := waitGone(ctx, s.mon, "query-block-exports", "id", id); err != nil {
		s.log().Warn("wait for NBD export removal", "export", id, "err", err)
	}
}

// settleBitmaps makes the state true again after a run. On success the
// new bitmap becomes the base and the old ones go (the server has the
// point in time). On failure the old bitmaps are merged into the new one,
// so it covers every change since the last acknowledged point.
func (s *Source) settleBitmaps(ctx context.Context, plans []*plan, next string, ok bool) {
	for _, p := range plans {
		if ok {
			p.ds.Bitmap, p.ds.Next = next, ""
			if p.mode == ModeRescan {
				p.ds.NeedRescan = false
			}
			if p.mode == ModeFull && !p.ds.Synced {
				p.ds.Synced, p.ds.SyncSeq = true, p.res.SnapshotSeq
			}
			p.ds.AckedSeq = max(p.ds.AckedSeq, s.link.ackedSeq(p.i))
			continue
		}
		if s.link != nil {
			p.ds.AckedSeq = max(p.ds.AckedSeq, s.link.ackedSeq(p.i))
		}
		if !p.created {
			// The run failed before the transaction: nothing changed in
			// QEMU, the old bitmaps still record every write.
			p.ds.Next = ""
			continue
		}
		if len(p.olds) == 0 {
			// Nothing acknowledged to build on (first run): whatever the
			// new bitmap holds, the next run copies everything again.
			p.ds.Bitmap, p.ds.Next = next, ""
			continue
		}
		err := s.mon.Execute(ctx, "block-dirty-bitmap-merge", map[string]any{"node": p.disk.Node, "target": next, "bitmaps": p.olds}, nil)
		if err != nil {
			// Keep both names: the next run reads their union.
			s.log().Warn("merge dirty bitmaps after a failed run", "disk", p.disk.Name, "err", err)
			continue
		}
		p.ds.Bitmap, p.ds.Next = next, ""
	}
	if err := s.st.save(s.StateDir); err != nil {
		s.log().Warn("save connector state", "err", err)
		return
	}
	for _, p := range plans {
		drop := []string{}
		if p.tmp != "" {
			drop = append(drop, p.tmp)
		}
		if p.ds.Bitmap == next && p.ds.Next == "" {
			drop = append(drop, p.olds...)
		}
		for _, b := range drop {
			if b == next {
				continue
			}
			if err := s.mon.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": p.disk.Node, "name": b}, nil); err != nil {
				s.log().Warn("remove dirty bitmap", "disk", p.disk.Name, "bitmap", b, "err", err)
			}
		}
	}
}

// copyAll copies every disk's extents from its export.
func (s *Source) copyAll(ctx context.Context, plans []*plan, sock string) error {
	for _, p := range plans {
		if err := s.copyDisk(ctx, p, sock); err != nil {
			return fmt.Errorf("run %s: %w", p.disk.Name, err)
		}
	}
	return nil
}

// snapshotAll ends the run with a SNAPSHOT on every disk (asking the
// server to keep keep of them, 0 all), then a BARRIER per FLUSH it
// answers (the same point in time: nothing was sent after the SNAPSHOT;
// crash-consistent, as the connector cannot freeze the guest's file
// systems), and waits until the server has made them durable.
func (s *Source) snapshotAll(ctx context.Context, plans []*plan, keep int, flushes []*protocol.Flush) error {
	last := make([]uint64, len(plans))
	for k, p := range plans {
		seq := s.next[p.i]
		s.next[p.i]++
		if err := s.link.send(&protocol.Snapshot{Disk: uint16(p.i), Seq: seq, Consistency: protocol.CrashConsistent, Keep: uint32(keep)}); err != nil {
			return err
		}
		p.res.SnapshotSeq, last[k] = seq, seq
		for _, f := range flushes {
			seq := s.next[p.i]
			s.next[p.i]++
			if err := s.link.send(&protocol.Barrier{Disk: uint16(p.i), Seq: seq, Consistency: protocol.CrashConsistent, FlushID: f.ID}); err != nil {
				return err
			}
			last[k] = seq
		}
	}
	for k, p := range plans {
		if err := s.link.waitAck(ctx, p.i, last[k]); err != nil {
			return fmt.Errorf("run %s: %w", p.disk.Name, err)
		}
		s.figures(p.disk.Name, func(f *diskFigures) {
			f.phase, f.replicated, f.backlog = protocol.PhaseContinuous, p.disk.Size, 0
			if !f.syncDone {
				f.syncDone, f.syncSeq = true, p.res.SnapshotSeq
			}
		})
	}
	return nil
}
