package connector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/ferrymigrate/ferry/pki"
)

// JobState is a replication job's state, as in AWS SMS.
type JobState string

// Job states.
const (
	// JobPending: created, no run started yet, or stopped by the operator
	// (Job.Stopped) so no run is scheduled.
	JobPending JobState = "PENDING"
	// JobActive: runs are scheduled (recurring) or one is in flight.
	JobActive JobState = "ACTIVE"
	// JobFailed: the last run failed; the next one is scheduled.
	JobFailed JobState = "FAILED"
	// JobPausedOnFailure: MaxConsecutiveFailures runs failed in a row, or
	// the server disconnected the VM; 'start' resumes it.
	JobPausedOnFailure JobState = "PAUSED_ON_FAILURE"
	// JobCompleted: a run-once job's run completed.
	JobCompleted JobState = "COMPLETED"
	// JobDeleted: deleted; it never runs again and the VM's dirty bitmaps
	// are removed.
	JobDeleted JobState = "DELETED"
)

// RunState is a replication run's state, as in AWS SMS.
type RunState string

// Run states.
const (
	RunPending   RunState = "PENDING"
	RunActive    RunState = "ACTIVE"
	RunCompleted RunState = "COMPLETED"
	RunFailed    RunState = "FAILED"
	RunMissed    RunState = "MISSED"
)

// MaxConsecutiveFailures pauses a job (PAUSED_ON_FAILURE) after this many
// failed runs in a row.
const MaxConsecutiveFailures = 3

// DefaultConcurrency bounds the runs in flight across all VMs (AWS SMS
// allowed 50 replication jobs at once).
const DefaultConcurrency = 200

// RunFailedRetry is when a failed run-once job tries again.
const RunFailedRetry = time.Minute

// JobSpec says when a VM is replicated.
type JobSpec struct {
	// Frequency between runs; 0 with RunOnce.
	Frequency time.Duration `json:"frequency_ns"`
	// FirstRun is when the first run starts (zero: now).
	FirstRun time.Time `json:"first_run,omitzero"`
	// RunOnce makes one run, then COMPLETED.
	RunOnce bool `json:"run_once"`
	// Keep is how many recent snapshots of each disk the server keeps
	// (older ones are deleted from the replica store after each run); 0
	// keeps them all.
	Keep int `json:"keep,omitempty"`
}

// Check says what is wrong with a spec, if anything.
func (s JobSpec) Check() error {
	switch {
	case s.Frequency < 0:
		return fmt.Errorf("frequency %s: want a positive duration", s.Frequency)
	case !s.RunOnce && s.Frequency < time.Second:
		return fmt.Errorf("frequency %s: a recurring job needs a frequency of at least 1s (or run once)", s.Frequency)
	case s.RunOnce && s.Frequency != 0:
		return errors.New("a run-once job has no frequency")
	case s.Keep < 0:
		return fmt.Errorf("keep %d: want 0 (keep all) or more", s.Keep)
	}
	return nil
}

// RunRecord is one run of a job.
type RunRecord struct {
	State RunState `json:"state"`
	// Reason says why a run failed or was missed, or what started an
	// unscheduled one.
	Reason      string     `json:"reason,omitempty"`
	ScheduledAt time.Time  `json:"scheduled_at"`
	Start       time.Time  `json:"start,omitzero"`
	End         time.Time  `json:"end,omitzero"`
	Result      *RunResult `json:"result,omitempty"`
}

// Job is one VM's replication job.
type Job struct {
	ServerID string   `json:"server_id"`
	VM       string   `json:"vm"`
	Spec     JobSpec  `json:"spec"`
	State    JobState `json:"state"`
	Reason   string   `json:"reason,omitempty"`
	Failures int      `json:"consecutive_failures"`
	// Stopped says the operator stopped the job: no scheduled runs until
	// 'start' (a FLUSH from the server still gets a run).
	Stopped bool `json:"stopped,omitempty"`
	// RunNow asks for an on-demand run ('start').
	RunNow  bool        `json:"run_now,omitempty"`
	NextRun time.Time   `json:"next_run,omitzero"`
	Created time.Time   `json:"created"`
	Runs    []RunRecord `json:"runs"` // newest last, at most keepRuns
}

const keepRuns = 20

// VMRecord is a VM of the connector's catalog: registered with the server
// as a DISCOVERED source server.
type VMRecord struct {
	ServerID  string `json:"server_id"`
	Name      string `json:"name"`
	MachineID string `json:"machine_id"`
	Socket    string `json:"socket"`
}

// Book is the connector's record of VMs and jobs, kept in jobs.json in
// its state directory. The running connector and the 'ferry connector
// jobs' commands share it: every change is a read-modify-write under an
// exclusive lock on jobs.lock, so neither loses the other's.
type Book struct {
	Version int                  `json:"version"`
	VMs     map[string]*VMRecord `json:"vms"`  // by server id
	Jobs    map[string]*Job      `json:"jobs"` // by server id
}

const bookVersion = 2

// ErrNoJob means the VM has no replication job.
var ErrNoJob = errors.New("no replication job")

// Jobs is the book in a connector's state directory.
type Jobs struct {
	Dir string
	mu  sync.Mutex // serialises this process's goroutines before flock
}

// ParseBook decodes a jobs file; data from before version 2 (a bare map of
// jobs by server id) is read as such.
func ParseBook(b []byte) (*Book, error) {
	bk := &Book{}
	if len(b) > 0 {
		if err := json.Unmarshal(b, bk); err != nil {
			return nil, fmt.Errorf("jobs file: %w", err)
		}
		if bk.Version == 0 && bk.VMs == nil && bk.Jobs == nil {
			old := map[string]*Job{}
			if err := json.Unmarshal(b, &old); err != nil {
				return nil, fmt.Errorf("jobs file (version 1): %w", err)
			}
			bk.Jobs = old
		}
		if bk.Version > bookVersion {
			return nil, fmt.Errorf("jobs file version %d is newer than this connector's (%d)", bk.Version, bookVersion)
		}
	}
	bk.Version = bookVersion
	if bk.VMs == nil {
		bk.VMs = map[string]*VMRecord{}
	}
	if bk.Jobs == nil {
		bk.Jobs = map[string]*Job{}
	}
	for id, j := range bk.Jobs {
		if j == nil {
			return nil, fmt.Errorf("jobs file: job %s is null", id)
		}
		if err := j.Spec.Check(); err != nil {
			return nil, fmt.Errorf("jobs file: job %s: %w", id, err)
		}
		switch j.State {
		case JobPending, JobActive, JobFailed, JobPausedOnFailure, JobCompleted, JobDeleted:
		default:
			return nil, fmt.Errorf("jobs file: job %s: unknown state %q", id, j.State)
		}
	}
	return bk, nil
}

// Update runs f on the book under the lock and saves it if f returns nil.
func (js *Jobs) Update(f func(*Book) error) error {
	js.mu.Lock()
	defer js.mu.Unlock()
	if err := os.MkdirAll(js.Dir, 0o700); err != nil {
		return fmt.Errorf("jobs: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(js.Dir, "jobs.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("jobs: lock: %w", err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("jobs: lock: %w", err)
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	bk, err := js.readLocked()
	if err != nil {
		return err
	}
	if err := f(bk); err != nil {
		return err
	}
	b, err := json.MarshalIndent(bk, "", "  ")
	if err != nil {
		return fmt.Errorf("jobs: %w", err)
	}
	if err := pki.WriteFileAtomic(filepath.Join(js.Dir, "jobs.json"), b, 0o600); err != nil {
		return fmt.Errorf("save jobs: %w", err)
	}
	return nil
}

func (js *Jobs) readLocked() (*Book, error) {
	b, err := os.ReadFile(filepath.Join(js.Dir, "jobs.json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read jobs: %w", err)
	}
	return ParseBook(b)
}

// Read returns the book (a copy: changing it changes nothing).
func (js *Jobs) Read() (*Book, error) {
	var out *Book
	err := js.Update(func(bk *Book) error {
		out = bk
		return errReadOnly
	})
	if errors.Is(err, errReadOnly) {
		err = nil
	}
	return out, err
}

var errReadOnly = errors.New("read only")

// Job returns a copy of a server's job (ErrNoJob if it has none).
func (js *Jobs) Job(serverID string) (*Job, error) {
	bk, err := js.Read()
	if err != nil {
		return nil, err
	}
	j := bk.Jobs[serverID]
	if j == nil {
		return nil, fmt.Errorf("source server %s: %w", serverID, ErrNoJob)
	}
	return j, nil
}

// List returns every job, ordered by server id.
func (js *Jobs) List() ([]*Job, error) {
	bk, err := js.Read()
	if err != nil {
		return nil, err
	}
	out := make([]*Job, 0, len(bk.Jobs))
	for _, j := range bk.Jobs {
		out = append(out, j)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ServerID < out[b].ServerID })
	return out, nil
}

// Resolve finds a catalogued VM by server id, name or machine id.
func (bk *Book) Resolve(ref string) (*VMRecord, error) {
	if v := bk.VMs[ref]; v != nil {
		return v, nil
	}
	var found []*VMRecord
	for _, v := range bk.VMs {
		if v.Name == ref || v.MachineID == ref {
			found = append(found, v)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no VM %q in the connector's catalog (see 'ferry connector vms')", ref)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("%d VMs are named %q; name one by its source server id", len(found), ref)
}

// Create adds a replication job for a catalogued VM (by server id, name
// or machine id). A VM has at most one job that is not DELETED.
func (js *Jobs) Create(ref string, spec JobSpec, now time.Time) (*Job, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	var out Job
	err := js.Update(func(bk *Book) error {
		vm, err := bk.Resolve(ref)
		if err != nil {
			return err
		}
		if j := bk.Jobs[vm.ServerID]; j != nil && j.State != JobDeleted {
			return fmt.Errorf("VM %s (source server %s) already has a replication job (%s); delete it first", vm.Name, vm.ServerID, j.State)
		}
		j := &Job{ServerID: vm.ServerID, VM: vm.Name, Spec: spec, State: JobPending, Created: now, NextRun: spec.FirstRun}
		if j.NextRun.IsZero() {
			j.NextRun = now
		}
		bk.Jobs[vm.ServerID] = j
		out = *j
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Start asks for an on-demand run now and resumes a stopped or paused
// job (its failure count starts over); a stopped job's schedule resumes
// at its next slot after now.
func (js *Jobs) Start(serverID string) error {
	return js.change(serverID, func(j *Job) error {
		if j.State == JobDeleted {
			return fmt.Errorf("the job of source server %s is DELETED; create a new one", serverID)
		}
		if j.Stopped && !j.Spec.RunOnce && j.Spec.Frequency > 0 {
			// Slots that passed while stopped are neither run nor MISSED:
			// the schedule resumes at its next slot.
			for now := time.Now(); !j.NextRun.After(now); {
				j.NextRun = j.NextRun.Add(j.Spec.Frequency)
			}
		}
		j.RunNow, j.Stopped = true, false
		if j.State == JobPausedOnFailure {
			j.State, j.Failures = JobFailed, 0
		}
		return nil
	})
}

// Stop stops scheduling runs (state PENDING, Stopped) until Start.
func (js *Jobs) Stop(serverID string) error {
	return js.change(serverID, func(j *Job) error {
		if j.State == JobDeleted {
			return fmt.Errorf("the job of source server %s is DELETED", serverID)
		}
		j.Stopped, j.RunNow = true, false
		if j.State != JobCompleted && j.State != JobPausedOnFailure {
			j.State, j.Reason = JobPending, "stopped by the operator; 'ferry connector jobs start' resumes it"
		}
		return nil
	})
}

// Delete marks a job DELETED so it never runs again; the running
// connector removes the VM's dirty bitmaps.
func (js *Jobs) Delete(serverID string) error {
	return js.change(serverID, func(j *Job) error {
		j.State, j.Reason, j.RunNow = JobDeleted, "deleted by the operator", false
		return nil
	})
}

func (js *Jobs) change(serverID string, f func(*Job) error) error {
	return js.Update(func(bk *Book) error {
		if vm, err := bk.Resolve(serverID); err == nil {
			serverID = vm.ServerID
		}
		j := bk.Jobs[serverID]
		if j == nil {
			return fmt.Errorf("source server %s: %w", serverID, ErrNoJob)
		}
		return f(j)
	})
}

func appendRun(runs []RunRecord, r RunRecord) []RunRecord {
	runs = append(runs, r)
	if len(runs) > keepRuns {
		runs = append([]RunRecord(nil), runs[len(runs)-keepRuns:]...)
	}
	return runs
}

// Decision is what a job calls for at a moment (see Decide).
type Decision struct {
	// Run says to start a run now; Reason says why when it is not a
	// scheduled one.
	Run    bool
	Reason string
	// Scheduled is the schedule slot the run takes (zero for on-demand
	// runs, which leave the schedule alone).
	Scheduled time.Time
	// Missed are schedule slots that fell due while the connector was not
	// running or a run overran: recorded MISSED, not run.
	Missed []time.Time
	// Wake is when to look again if nothing happens (zero: only on a
	// change of the book or a FLUSH).
	Wake time.Time
	// Drop says the job is DELETED: drop the VM's dirty bitmaps.
	Drop bool
}

// Decide is the scheduler's pure rule: given a job (nil: none), whether a
// FLUSH is waiting and the time, what to do.
func Decide(j *Job, flush bool, now time.Time) Decision {
	if j == nil {
		return Decision{}
	}
	if j.State == JobDeleted {
		return Decision{Drop: true}
	}
	if flush {
		return Decision{Run: true, Reason: "the server asked for a drained point (FLUSH: test launch or cutover)"}
	}
	if j.RunNow {
		return Decision{Run: true, Reason: "started by the operator"}
	}
	if j.Stopped || j.State == JobCompleted || j.State == JobPausedOnFailure {
		return Decision{}
	}
	next := j.NextRun
	if next.After(now) {
		return Decision{Wake: next}
	}
	d := Decision{Run: true}
	if f := j.Spec.Frequency; f > 0 && !j.Spec.RunOnce {
		for next.Add(f).Compare(now) <= 0 {
			d.Missed = append(d.Missed, next)
			next = next.Add(f)
		}
	}
	d.Scheduled = next
	return d
}

// Finish is the job's new state after a run ended with err (nil:
// completed). scheduled is the run's schedule slot (zero: on demand).
func Finish(j *Job, scheduled time.Time, err error, now time.Time) {
	if j.State == JobDeleted {
		return
	}
	if err != nil {
		j.Failures++
		j.State, j.Reason = JobFailed, err.Error()
		if j.Failures >= MaxConsecutiveFailures || errors.Is(err, ErrDisconnected) {
			j.State = JobPausedOnFailure
			if errors.Is(err, ErrDisconnected) {
				j.Reason = "the server disconnected this VM: " + err.Error()
			} else {
				j.Reason = fmt.Sprintf("%d runs failed in a row; last: %v", j.Failures, err)
			}
		}
	} else {
		j.Failures, j.Reason = 0, ""
		j.State = JobActive
		if j.Spec.RunOnce {
			j.State = JobCompleted
		}
	}
	switch {
	case j.Stopped:
		if j.State != JobCompleted && j.State != JobPausedOnFailure {
			j.State, j.Reason = JobPending, "stopped by the operator; 'ferry connector jobs start' resumes it"
		}
	case !scheduled.IsZero() && j.Spec.RunOnce && err != nil:
		j.NextRun = now.Add(RunFailedRetry)
	case !scheduled.IsZero():
		j.NextRun = scheduled.Add(j.Spec.Frequency)
	}
}

// runHook, when set (tests), is called with +1 when a run starts and -1
// when it ends.
var runHook func(delta int)

// Scheduler runs the jobs of a connector's VMs, as the book in StateDir
// says, at most Concurrency runs at once.
type Scheduler struct {
	StateDir string
	// Concurrency bounds runs in flight across all VMs; 0 means
	// DefaultConcurrency.
	Concurrency int
	// Poll is how often the book is read again for changes the CLI made;
	// 0 means 1 s.
	Poll time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	once sync.Once
	jobs *Jobs
	sem  chan struct{}
}

func (s *Scheduler) init() {
	s.once.Do(func() {
		s.jobs = &Jobs{Dir: s.StateDir}
		n := s.Concurrency
		if n <= 0 {
			n = DefaultConcurrency
		}
		s.sem = make(chan struct{}, n)
	})
}

func (s *Scheduler) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Book is the scheduler's job book.
func (s *Scheduler) Book() *Jobs {
	s.init()
	return s.jobs
}

// Register records src in the catalog (the VM is a DISCOVERED source
// server until a job's first run).
func (s *Scheduler) Register(src *Source) error {
	s.init()
	return s.jobs.Update(func(bk *Book) error {
		bk.VMs[src.ServerID] = &VMRecord{ServerID: src.ServerID, Name: src.Name, MachineID: src.MachineID, Socket: src.Socket}
		return nil
	})
}

// Serve runs src's job, as the book says, until ctx ends. until, when
// set, ends Serve once it returns true for the VM's job (the CLI's --once
// ends when every job is finished).
func (s *Scheduler) Serve(ctx context.Context, src *Source, until func(*Job) bool) error {
	s.init()
	log := src.log()
	poll := s.Poll
	if poll <= 0 {
		poll = time.Second
	}
	dropped := false
	for {
		j, err := s.jobs.Job(src.ServerID)
		if errors.Is(err, ErrNoJob) {
			j, err = nil, nil
		}
		if err != nil {
			return err
		}
		if j != nil && until != nil && until(j) {
			return nil
		}
		d := Decide(j, src.PendingFlushes() > 0, s.now())
		if d.Drop && !dropped {
			src.DropTracking(ctx)
			dropped = true
		}
		if !d.Drop {
			dropped = false
		}
		if d.Run {
			if err := s.run(ctx, src, d); err != nil {
				return err
			}
			continue
		}
		wait := poll
		if !d.Wake.IsZero() {
			wait = min(wait, d.Wake.Sub(s.now()))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-src.FlushRequested():
			log.Info("running now to answer the server's FLUSH", "server", src.ServerID)
		case <-time.After(max(wait, 0)):
		}
	}
}

// run makes one run of src's job as d says and records it.
func (s *Scheduler) run(ctx context.Context, src *Source, d Decision) error {
	log := src.log()
	var spec JobSpec
	var prev JobState
	idx := -1
	err := s.jobs.change(src.ServerID, func(j *Job) error {
		prev = j.State
		for _, m := range d.Missed {
			j.Runs = appendRun(j.Runs, RunRecord{State: RunMissed, ScheduledAt: m, Reason: "fell due while the connector was not running or a run overran"})
		}
		if len(d.Missed) > 0 {
			j.NextRun = d.Scheduled
		}
		at := d.Scheduled
		if at.IsZero() {
			at = s.now()
		}
		j.RunNow = false
		j.Runs = appendRun(j.Runs, RunRecord{State: RunPending, ScheduledAt: at, Reason: d.Reason})
		idx = len(j.Runs) - 1
		spec = j.Spec
		return nil
	})
	if err != nil {
		return err
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		s.endRun(src, idx, func(j *Job, r *RunRecord) {
			r.State, r.End, r.Reason = RunFailed, s.now(), "the connector stopped before the run started"
			if prev != JobActive {
				j.State = prev
			}
		})
		return nil
	}
	if runHook != nil {
		runHook(1)
	}
	s.endRun(src, idx, func(j *Job, r *RunRecord) {
		r.State, r.Start = RunActive, s.now()
		if j.State != JobDeleted {
			j.State = JobActive
		}
	})
	res, rerr := src.RunWith(ctx, RunOptions{Keep: spec.Keep})
	if runHook != nil {
		runHook(-1)
	}
	<-s.sem
	if ctx.Err() != nil {
		s.endRun(src, idx, func(j *Job, r *RunRecord) {
			r.State, r.End, r.Reason = RunFailed, s.now(), "the connector stopped during the run"
			if j.State == JobActive && prev != JobActive {
				j.State = prev
			}
		})
		return nil
	}
	s.endRun(src, idx, func(j *Job, r *RunRecord) {
		r.End, r.Result = s.now(), res
		if rerr != nil {
			r.State = RunFailed
			r.Reason = joinReason(r.Reason, rerr.Error())
			log.Warn("replication run failed", "server", src.ServerID, "vm", j.VM, "err", rerr, "consecutive_failures", j.Failures+1)
		} else {
			r.State = RunCompleted
			log.Info("replication run completed", "server", src.ServerID, "vm", j.VM, "sent_bytes", res.SentBytes(), "seconds", res.End.Sub(res.Start).Seconds())
		}
		Finish(j, d.Scheduled, rerr, s.now())
		if prev == JobCompleted && j.State != JobDeleted {
			// An on-demand run (start, FLUSH) of a finished run-once job.
			j.State = JobCompleted
		}
	})
	return nil
}

func joinReason(a, b string) string {
	if a == "" {
		return b
	}
	return a + ": " + b
}

// endRun changes the run at idx (still the same run: runs are appended
// only by this VM's Serve) and its job.
func (s *Scheduler) endRun(src *Source, idx int, f func(*Job, *RunRecord)) {
	err := s.jobs.change(src.ServerID, func(j *Job) error {
		if idx < 0 || idx >= len(j.Runs) {
			return fmt.Errorf("run %d is gone from the book", idx)
		}
		f(j, &j.Runs[idx])
		return nil
	})
	if err != nil {
		src.log().Warn("record a run in the jobs file", "server", src.ServerID, "err", err)
	}
}

// Finished is an until for Serve: true once the job needs nothing more
// (COMPLETED, PAUSED_ON_FAILURE or DELETED).
func Finished(j *Job) bool {
	return j.State == JobCompleted || j.State == JobPausedOnFailure || j.State == JobDeleted
}
