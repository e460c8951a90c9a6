package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry"
)

// Snapshotter gives launches their point in time. The replication server
// implements it.
type Snapshotter interface {
	// Snapshot makes a crash-consistent snapshot of every disk of the
	// server now and returns disk name → snapshot id. With drain, it first
	// waits until the agent has sent everything it tracked (lag zero), up
	// to ctx's deadline.
	Snapshot(ctx context.Context, serverID string, drain bool) (map[string]string, error)
	// Latest returns the newest snapshot of every disk, or an error if a
	// disk has none.
	Latest(ctx context.Context, serverID string) (map[string]string, error)
	// Pick returns existing snapshots of every disk: those named in ids
	// (disk name → snapshot id; the key "" names the only disk of a
	// one-disk server), or else each disk's newest taken at or before at.
	// It fails, naming what is wrong, when one does not exist.
	Pick(ctx context.Context, serverID string, ids map[string]string, at time.Time) (map[string]string, error)
}

// LogFunc appends a line to the job log of the server being launched.
type LogFunc func(ev ferry.JobEvent, format string, args ...any)

// Launcher starts and stops instances on a launch target and runs
// post-launch actions against them.
type Launcher interface {
	// InstanceID returns a new ID for an instance of srv launched by kind.
	// The runner records it in the job before Launch, so that Recover can
	// terminate what a control plane killed during Launch left running.
	InstanceID(srv *ferry.SourceServer, kind ferry.JobInitiator) string
	// Launch boots instance id of the server from the given snapshots. It
	// returns once the instance runs; on error nothing is left behind.
	// Steps inside the launch (conversion) are reported with logf.
	Launch(ctx context.Context, srv *ferry.SourceServer, snapshots map[string]string, kind ferry.JobInitiator, jobID, id string, logf LogFunc) (*ferry.LaunchedInstance, error)
	// PostLaunch runs one post-launch action against a running instance.
	PostLaunch(ctx context.Context, inst *ferry.LaunchedInstance, action ferry.PostLaunchAction) ferry.PostLaunchResult
	// Terminate stops and removes an instance; terminating one that is
	// already gone is not an error.
	Terminate(ctx context.Context, inst *ferry.LaunchedInstance) error
}

// ErrBusy means a server already has an active job.
var ErrBusy = errors.New("server has an active job")

// Runner runs jobs in the background. Store, Snapshots and Launcher are
// required.
type Runner struct {
	Store     ferry.Store
	Snapshots Snapshotter
	Launcher  Launcher
	Logger    *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// DrainTimeout bounds a cutover's wait for the backlog to drain
	// (default 30 minutes); an operator may override the wait.
	DrainTimeout time.Duration
	// TestDrainTimeout bounds a test launch's wait for a drained point
	// (default 30 s); past it the newest consistent point is used.
	TestDrainTimeout time.Duration
	// OnEnd, if set, is told of every job this runner ran when it ends,
	// with its final state (package metrics records durations and
	// outcomes).
	OnEnd func(*ferry.Job)

	mu     sync.Mutex
	active map[string]string // server id → job id; guarded by mu
	wg     sync.WaitGroup
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now().UTC()
	}
	return time.Now().UTC()
}

func (r *Runner) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

// Options tune a launch.
type Options struct {
	// Snapshot uses the newest existing snapshot instead of taking one.
	UseLatest bool
	// SkipDrain launches from the newest consistent point already
	// replicated, without asking the agent for a drained one (for a
	// cutover: the operator's override of the final sync).
	SkipDrain bool
	// LaunchTemplate, when set, is the id of a template whose launch
	// settings this launch uses instead of each server's own. An unknown
	// id fails each server's launch before a snapshot is taken.
	LaunchTemplate string
	// Snapshots (disk name → snapshot id) or PointInTime choose existing
	// snapshots to launch from (see Snapshotter.Pick); they override
	// UseLatest and, for a cutover, the drain.
	Snapshots   map[string]string
	PointInTime time.Time
}

// StartTest starts a test launch of each server.
func (r *Runner) StartTest(ctx context.Context, serverIDs []string, o Options) (*ferry.Job, error) {
	return r.start(ctx, ferry.JobLaunch, ferry.InitiatedByStartTest, serverIDs, o)
}

// StartCutover starts a cutover launch of each server.
func (r *Runner) StartCutover(ctx context.Context, serverIDs []string, o Options) (*ferry.Job, error) {
	return r.start(ctx, ferry.JobLaunch, ferry.InitiatedByStartCutover, serverIDs, o)
}

// Terminate starts a job that terminates each server's launched instance.
func (r *Runner) Terminate(ctx context.Context, serverIDs []string) (*ferry.Job, error) {
	return r.start(ctx, ferry.JobTerminate, ferry.InitiatedByTerminate, serverIDs, Options{})
}

// checkStart says why a server cannot take part in a job, or nil.
func checkStart(srv *ferry.SourceServer, by ferry.JobInitiator) error {
	if srv.Archived {
		return fmt.Errorf("server %s is archived; unarchive it first", srv.ID)
	}
	switch by {
	case ferry.InitiatedByStartTest:
		switch srv.Lifecycle {
		case ferry.LifecycleReadyForTest, ferry.LifecycleTesting, ferry.LifecycleReadyForCutover:
		default:
			return fmt.Errorf("server %s is %s: test launches need READY_FOR_TEST, TESTING or READY_FOR_CUTOVER (initial sync must finish first)", srv.ID, srv.Lifecycle)
		}
	case ferry.InitiatedByStartCutover:
		if srv.Lifecycle != ferry.LifecycleReadyForCutover {
			return fmt.Errorf("server %s is %s: cutover needs READY_FOR_CUTOVER (mark it after a successful test)", srv.ID, srv.Lifecycle)
		}
	case ferry.InitiatedByTerminate:
		if srv.Launched == nil || !srv.Launched.TerminatedAt.IsZero() {
			return fmt.Errorf("server %s has no launched instance to terminate", srv.ID)
		}
		if srv.Launched.Kind == ferry.InitiatedByStartCutover && (srv.Lifecycle == ferry.LifecycleCuttingOver || srv.Lifecycle == ferry.LifecycleCutover) {
			return fmt.Errorf("server %s is %s: its cutover instance is kept", srv.ID, srv.Lifecycle)
		}
	}
	return nil
}

func (r *Runner) start(ctx context.Context, typ ferry.JobType, by ferry.JobInitiator, serverIDs []string, o Options) (*ferry.Job, error) {
	if len(serverIDs) == 0 {
		return nil, fmt.Errorf("%w: no servers given", ferry.ErrInvalid)
	}
	ids := append([]string(nil), serverIDs...)
	sort.Strings(ids)
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] {
			return nil, fmt.Errorf("%w: server %s named twice", ferry.ErrInvalid, ids[i])
		}
	}
	for _, id := range ids {
		srv, err := r.Store.Server(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := checkStart(srv, by); err != nil {
			return nil, fmt.Errorf("%w: %v", ferry.ErrInvalid, err)
		}
	}
	job := &ferry.Job{ID: newJobID(), Type: typ, InitiatedBy: by, Status: ferry.JobPending, CreatedAt: r.now()}
	for _, id := range ids {
		job.Servers = append(job.Servers, ferry.JobServer{SourceServerID: id, LaunchStatus: ferry.LaunchPending})
	}
	r.mu.Lock()
	if r.active == nil {
		r.active = map[string]string{}
	}
	for _, id := range ids {
		if other, ok := r.active[id]; ok {
			r.mu.Unlock()
			return nil, fmt.Errorf("%w: server %s is in job %s", ErrBusy, id, other)
		}
	}
	for _, id := range ids {
		r.active[id] = job.ID
	}
	r.mu.Unlock()
	if err := r.Store.CreateJob(ctx, job); err != nil {
		r.release(ids)
		return nil, fmt.Errorf("create job: %w", err)
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer r.release(ids)
		r.run(context.WithoutCancel(ctx), job, o)
	}()
	return job, nil
}

func (r *Runner) release(ids []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		delete(r.active, id)
	}
}

// Wait blocks until every running job has ended.
func (r *Runner) Wait() { r.wg.Wait() }

func (r *Runner) logf(ctx context.Context, jobID, serverID string, ev ferry.JobEvent, format string, args ...any) {
	item := ferry.JobLogItem{JobID: jobID, Time: r.now(), Event: ev, SourceServerID: serverID, Message: fmt.Sprintf(format, args...)}
	if err := r.Store.AppendJobLog(ctx, item); err != nil {
		r.log().Error("append job log", "job", jobID, "err", err)
	}
}

func (r *Runner) setStatus(ctx context.Context, jobID string, fn func(*ferry.Job)) {
	if _, err := r.Store.UpdateJob(ctx, jobID, func(j *ferry.Job) error { fn(j); return nil }); err != nil {
		r.log().Error("update job", "job", jobID, "err", err)
	}
}

// setServerInstance records the ID of the instance a job launches (or
// launched) for a server; "" clears it.
func (r *Runner) setServerInstance(ctx context.Context, jobID, serverID, instanceID string) {
	r.setStatus(ctx, jobID, func(j *ferry.Job) {
		for i := range j.Servers {
			if j.Servers[i].SourceServerID == serverID {
				j.Servers[i].InstanceID = instanceID
			}
		}
	})
}

func (r *Runner) setServerStatus(ctx context.Context, jobID, serverID string, st ferry.LaunchStatus, instanceID string) {
	r.setStatus(ctx, jobID, func(j *ferry.Job) {
		for i := range j.Servers {
			if j.Servers[i].SourceServerID == serverID {
				j.Servers[i].LaunchStatus = st
				if instanceID != "" {
					j.Servers[i].InstanceID = instanceID
				}
			}
		}
	})
}

func (r *Runner) run(ctx context.Context, job *ferry.Job, o Options) {
	r.setStatus(ctx, job.ID, func(j *ferry.Job) { j.Status = ferry.JobStarted })
	r.logf(ctx, job.ID, "", ferry.EventJobStart, "%s job initiated by %s for %d server(s)", job.Type, job.InitiatedBy, len(job.Servers))
	var wg sync.WaitGroup
	for _, js := range job.Servers {
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			if job.Type == ferry.JobTerminate {
				r.terminateOne(ctx, job, id)
			} else {
				r.launchOne(ctx, job, id, o)
			}
		}(js.SourceServerID)
	}
	wg.Wait()
	// JOB_END is logged before the job shows COMPLETED: whoever sees it
	// completed (`ferry jobs wait`) then has the whole log.
	r.logf(ctx, job.ID, "", ferry.EventJobEnd, "job ended")
	r.setStatus(ctx, job.ID, func(j *ferry.Job) { j.Status = ferry.JobCompleted; j.EndedAt = r.now() })
	if r.OnEnd != nil {
		if final, err := r.Store.Job(ctx, job.ID); err == nil {
			r.OnEnd(final)
		}
	}
}

// move changes a server's lifecycle through the state machine.
func (r *Runner) move(ctx context.Context, serverID string, to ferry.LifecycleState, fn func(*ferry.SourceServer)) error {
	now := r.now()
	_, err := r.Store.UpdateServer(ctx, serverID, func(s *ferry.SourceServer) error {
		if to != "" {
			if err := ferry.CheckTransition(s.Lifecycle, to); err != nil {
				return err
			}
			s.Lifecycle = to
		}
		if fn != nil {
			fn(s)
		}
		s.UpdatedAt = now
		return nil
	})
	return err
}

func (r *Runner) launchOne(ctx context.Context, job *ferry.Job, id string, o Options) {
	cutover := job.InitiatedBy == ferry.InitiatedByStartCutover
	fail := func(ev ferry.JobEvent, format string, args ...any) {
		r.logf(ctx, job.ID, id, ev, format, args...)
		r.setServerStatus(ctx, job.ID, id, ferry.LaunchFailed, "")
		if cutover {
			if err := r.move(ctx, id, ferry.LifecycleReadyForCutover, nil); err != nil {
				r.log().Error("revert cutover state", "server", id, "err", err)
			}
		}
	}
	r.setServerStatus(ctx, job.ID, id, ferry.LaunchInProgress, "")
	if cutover {
		if err := r.move(ctx, id, ferry.LifecycleCuttingOver, nil); err != nil {
			fail(ferry.EventLaunchFailed, "cannot start cutover: %v", err)
			return
		}
	}
	srv, err := r.Store.Server(ctx, id)
	if err != nil {
		fail(ferry.EventLaunchFailed, "read server: %v", err)
		return
	}
	if o.LaunchTemplate != "" {
		tpl, err := r.Store.Template(ctx, o.LaunchTemplate)
		if errors.Is(err, ferry.ErrNotFound) {
			fail(ferry.EventLaunchFailed, "unknown launch template %q (ferry templates list shows the templates)", o.LaunchTemplate)
			return
		}
		if err != nil {
			fail(ferry.EventLaunchFailed, "read launch template %q: %v", o.LaunchTemplate, err)
			return
		}
		srv.LaunchSetup = tpl.Launch
		r.logf(ctx, job.ID, id, ferry.EventLaunchStart, "using the launch settings of template %s (%s)", tpl.ID, tpl.Name)
	}
	var snaps map[string]string
	if len(o.Snapshots) > 0 || !o.PointInTime.IsZero() {
		if snaps, err = r.Snapshots.Pick(ctx, id, o.Snapshots, o.PointInTime); err != nil {
			fail(ferry.EventSnapshotFail, "chosen snapshot: %v (ferry snapshots list %s shows them)", err, id)
			return
		}
		r.logf(ctx, job.ID, id, ferry.EventUsingPreviousSnapshot, "using the chosen snapshots %v", snaps)
	} else if o.UseLatest {
		if snaps, err = r.Snapshots.Latest(ctx, id); err != nil {
			fail(ferry.EventSnapshotFail, "no snapshot to use: %v", err)
			return
		}
		r.logf(ctx, job.ID, id, ferry.EventUsingPreviousSnapshot, "using snapshots %v", snaps)
	} else {
		r.logf(ctx, job.ID, id, ferry.EventSnapshotStart, "taking a snapshot of the source as of now (replication continues)")
		if cutover && !o.SkipDrain {
			d := r.DrainTimeout
			if d <= 0 {
				d = 30 * time.Minute
			}
			sctx, cancel := context.WithTimeout(ctx, d)
			snaps, err = r.Snapshots.Snapshot(sctx, id, true)
			cancel()
			if err != nil {
				fail(ferry.EventSnapshotFail, "final sync did not drain: %v (cut over with skip_drain to use the newest consistent point)", err)
				return
			}
		} else {
			// A test takes the source as of now when the agent can say so
			// quickly, else the newest consistent point already replicated.
			d := r.TestDrainTimeout
			if d <= 0 {
				d = 30 * time.Second
			}
			sctx, cancel := context.WithTimeout(ctx, d)
			snaps, err = r.Snapshots.Snapshot(sctx, id, !o.SkipDrain)
			cancel()
			if err != nil && !o.SkipDrain {
				r.logf(ctx, job.ID, id, ferry.EventUsingPreviousSnapshot, "no drained point (%v); using the newest consistent point", err)
				snaps, err = r.Snapshots.Snapshot(ctx, id, false)
			}
			if err != nil {
				fail(ferry.EventSnapshotFail, "snapshot failed: %v", err)
				return
			}
		}
		r.logf(ctx, job.ID, id, ferry.EventSnapshotEnd, "snapshots %v", snaps)
	}
	target := srv.LaunchSetup.Target
	if target == "" {
		target = "(default)"
	}
	r.logf(ctx, job.ID, id, ferry.EventLaunchStart, "launching on target %s", target)
	logf := func(ev ferry.JobEvent, format string, args ...any) { r.logf(ctx, job.ID, id, ev, format, args...) }
	// The instance's ID is in the job before the instance exists: a
	// control plane killed during Launch leaves it for Recover.
	iid := r.Launcher.InstanceID(srv, job.InitiatedBy)
	r.setServerInstance(ctx, job.ID, id, iid)
	inst, err := r.Launcher.Launch(ctx, srv, snaps, job.InitiatedBy, job.ID, iid, logf)
	if err != nil {
		r.setServerInstance(ctx, job.ID, id, "") // nothing was left behind
		fail(ferry.EventLaunchFailed, "launch failed: %v", err)
		return
	}
	r.setServerStatus(ctx, job.ID, id, ferry.LaunchLaunched, inst.ID)
	// The new instance replaces the server's previous one (a test launch
	// repeated, or a failed cutover's instance): terminate that first, so
	// that no instance runs that no record points to.
	if prev := srv.Launched; prev != nil && prev.TerminatedAt.IsZero() && prev.ID != inst.ID {
		r.replace(ctx, job, id, prev)
	}
	if err := r.move(ctx, id, "", func(s *ferry.SourceServer) { s.Launched = inst }); err != nil {
		r.log().Error("record launched instance", "server", id, "err", err)
	}
	ok := r.postLaunch(ctx, job, srv, inst, cutover)
	if !ok {
		r.setServerStatus(ctx, job.ID, id, ferry.LaunchFailed, inst.ID)
		if cutover {
			if err := r.move(ctx, id, ferry.LifecycleReadyForCutover, nil); err != nil {
				r.log().Error("revert cutover state", "server", id, "err", err)
			}
		}
		return
	}
	if !cutover {
		if err := r.move(ctx, id, ferry.LifecycleTesting, nil); err != nil {
			r.logf(ctx, job.ID, id, ferry.EventLaunchFailed, "instance launched, but the lifecycle did not move: %v", err)
		}
	}
}

// postLaunch runs the active actions that apply to this kind of launch, in
// order, and reports whether every action that must succeed did.
func (r *Runner) postLaunch(ctx context.Context, job *ferry.Job, srv *ferry.SourceServer, inst *ferry.LaunchedInstance, cutover bool) bool {
	actions := append([]ferry.PostLaunchAction(nil), srv.LaunchSetup.PostLaunchActions...)
	sort.SliceStable(actions, func(i, j int) bool { return actions[i].Order < actions[j].Order })
	ok := true
	for _, a := range actions {
		if !a.Active || (a.Deployment == "TEST_ONLY" && cutover) || (a.Deployment == "CUTOVER_ONLY" && !cutover) {
			continue
		}
		r.logf(ctx, job.ID, srv.ID, ferry.EventPostLaunchStart, "%s (%s)", a.Name, a.Category)
		actx := ctx
		cancel := func() {}
		if a.TimeoutSeconds > 0 {
			actx, cancel = context.WithTimeout(ctx, time.Duration(a.TimeoutSeconds)*time.Second)
		}
		res := r.Launcher.PostLaunch(actx, inst, a)
		cancel()
		inst.PostLaunch = append(inst.PostLaunch, res)
		if res.Status == ferry.PostLaunchSuccess {
			r.logf(ctx, job.ID, srv.ID, ferry.EventPostLaunchEnd, "%s: %s", a.Name, res.Output)
		} else {
			r.logf(ctx, job.ID, srv.ID, ferry.EventPostLaunchFail, "%s: %s", a.Name, res.Output)
			if a.MustSucceed || a.Category == "VALIDATION" {
				ok = false
			}
		}
		if a.Category == "VALIDATION" && res.Status == ferry.PostLaunchSuccess && inst.FirstBoot == ferry.FirstBootWaiting {
			inst.FirstBoot = ferry.FirstBootSucceeded
		}
		_ = r.move(ctx, srv.ID, "", func(s *ferry.SourceServer) { s.Launched = inst })
	}
	return ok
}

// replace terminates a server's previous instance once a new one runs. A
// failure is logged and the job goes on: the new instance is what counts,
// and the old one's files say where it is.
func (r *Runner) replace(ctx context.Context, job *ferry.Job, id string, prev *ferry.LaunchedInstance) {
	r.logf(ctx, job.ID, id, ferry.EventCleanupStart, "terminating the previous %s instance %s, which the new one replaces", kindName(prev.Kind), prev.ID)
	if err := r.Launcher.Terminate(ctx, prev); err != nil {
		r.logf(ctx, job.ID, id, ferry.EventCleanupFail, "terminate the previous instance %s: %v (stop it by hand)", prev.ID, err)
		return
	}
	r.logf(ctx, job.ID, id, ferry.EventCleanupEnd, "previous instance %s terminated", prev.ID)
}

func kindName(k ferry.JobInitiator) string {
	if k == ferry.InitiatedByStartCutover {
		return "cutover"
	}
	return "test"
}

func (r *Runner) terminateOne(ctx context.Context, job *ferry.Job, id string) {
	srv, err := r.Store.Server(ctx, id)
	if err != nil || srv.Launched == nil {
		r.logf(ctx, job.ID, id, ferry.EventCleanupFail, "no launched instance: %v", err)
		r.setServerStatus(ctx, job.ID, id, ferry.LaunchFailed, "")
		return
	}
	inst := srv.Launched
	r.logf(ctx, job.ID, id, ferry.EventCleanupStart, "terminating instance %s", inst.ID)
	if err := r.Launcher.Terminate(ctx, inst); err != nil {
		r.logf(ctx, job.ID, id, ferry.EventCleanupFail, "terminate %s: %v", inst.ID, err)
		r.setServerStatus(ctx, job.ID, id, ferry.LaunchFailed, inst.ID)
		return
	}
	now := r.now()
	if err := r.move(ctx, id, "", func(s *ferry.SourceServer) {
		if s.Launched != nil && s.Launched.ID == inst.ID {
			s.Launched.TerminatedAt = now
			s.Launched.FirstBoot = ferry.FirstBootStopped
		}
	}); err != nil {
		r.log().Error("record termination", "server", id, "err", err)
	}
	r.setServerStatus(ctx, job.ID, id, ferry.LaunchTerminated, inst.ID)
	r.logf(ctx, job.ID, id, ferry.EventCleanupEnd, "instance %s terminated", inst.ID)
}

// Finalize ends a cutover: the server moves CUTTING_OVER → CUTOVER,
// replication stops, and the cutover instance is kept.
func (r *Runner) Finalize(ctx context.Context, serverID string) (*ferry.SourceServer, error) {
	r.mu.Lock()
	job, busy := r.active[serverID]
	r.mu.Unlock()
	if busy {
		return nil, fmt.Errorf("%w: server %s is in job %s", ErrBusy, serverID, job)
	}
	var out *ferry.SourceServer
	now := r.now()
	out, err := r.Store.UpdateServer(ctx, serverID, func(s *ferry.SourceServer) error {
		if s.Lifecycle != ferry.LifecycleCuttingOver || s.Launched == nil || s.Launched.Kind != ferry.InitiatedByStartCutover {
			return fmt.Errorf("%w: server %s is %s: finalize needs a launched cutover instance (CUTTING_OVER)", ferry.ErrInvalid, s.ID, s.Lifecycle)
		}
		if err := ferry.CheckTransition(s.Lifecycle, ferry.LifecycleCutover); err != nil {
			return err
		}
		s.Lifecycle = ferry.LifecycleCutover
		s.Desired = ferry.DesiredStop
		s.UpdatedAt = now
		return nil
	})
	return out, err
}

// Recover ends the jobs a previous control-plane process left running:
// their servers' launches are marked FAILED with the reason, the instance
// a launch may have started before the process ended (or started, but
// never recorded on its server) is terminated, and a cutover in progress
// goes back to READY_FOR_CUTOVER.
func (r *Runner) Recover(ctx context.Context) (int, error) {
	n := 0
	for _, st := range []ferry.JobStatus{ferry.JobPending, ferry.JobStarted} {
		f := ferry.JobFilter{Status: st, Limit: ferry.MaxPageSize}
		for {
			list, next, err := r.Store.ListJobs(ctx, f)
			if err != nil {
				return n, fmt.Errorf("list unfinished jobs: %w", err)
			}
			for _, j := range list {
				for _, js := range j.Servers {
					// An instance the launch started and the job recorded,
					// but that the server's record never got (the process
					// ended between the two), is one nothing else points to:
					// it is terminated like an interrupted launch's.
					if js.LaunchStatus == ferry.LaunchLaunched && js.InstanceID != "" && !r.recorded(ctx, js) {
						js.LaunchStatus = ferry.LaunchInProgress
					}
					if js.LaunchStatus == ferry.LaunchPending || js.LaunchStatus == ferry.LaunchInProgress {
						if js.InstanceID != "" {
							r.recoverInstance(ctx, j, js)
						}
						r.setServerStatus(ctx, j.ID, js.SourceServerID, ferry.LaunchFailed, "")
						r.logf(ctx, j.ID, js.SourceServerID, ferry.EventJobCancel, "the control plane restarted during this job; launch it again")
						if j.InitiatedBy == ferry.InitiatedByStartCutover {
							_ = r.move(ctx, js.SourceServerID, ferry.LifecycleReadyForCutover, nil)
						}
					}
				}
				r.logf(ctx, j.ID, "", ferry.EventJobEnd, "ended after a control-plane restart")
				r.setStatus(ctx, j.ID, func(j *ferry.Job) { j.Status = ferry.JobCompleted; j.EndedAt = r.now() })
				n++
			}
			if next == "" {
				break
			}
			f.After = next
		}
	}
	return n, nil
}

// recorded reports whether js's instance is the one its server's record
// points to. A server that cannot be read counts as recorded: Recover
// then leaves the instance alone rather than terminate one in use.
func (r *Runner) recorded(ctx context.Context, js ferry.JobServer) bool {
	srv, err := r.Store.Server(ctx, js.SourceServerID)
	if err != nil {
		return !errors.Is(err, ferry.ErrNotFound)
	}
	return srv.Launched != nil && srv.Launched.ID == js.InstanceID
}

// recoverInstance terminates the instance an interrupted launch may have
// started (on the server's launch target; one that never started is
// already gone, which is no error). A failure is logged with the ID, for
// the operator to remove it by hand.
func (r *Runner) recoverInstance(ctx context.Context, j *ferry.Job, js ferry.JobServer) {
	target := ""
	if srv, err := r.Store.Server(ctx, js.SourceServerID); err == nil {
		target = srv.LaunchSetup.Target
	}
	inst := &ferry.LaunchedInstance{ID: js.InstanceID, JobID: j.ID, Kind: j.InitiatedBy, Target: target}
	if err := r.Launcher.Terminate(ctx, inst); err != nil {
		r.log().Error("terminate the instance of an interrupted launch", "job", j.ID, "server", js.SourceServerID, "instance", js.InstanceID, "err", err)
		r.logf(ctx, j.ID, js.SourceServerID, ferry.EventLaunchFailed, "instance %s of the interrupted launch could not be terminated: %v; remove it from the launch target by hand", js.InstanceID, err)
		return
	}
	r.logf(ctx, j.ID, js.SourceServerID, ferry.EventJobCancel, "terminated instance %s, which the interrupted launch may have started", js.InstanceID)
}
