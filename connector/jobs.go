package connector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry/pki"
)

// JobState is a replication job's state, as in AWS SMS.
type JobState string

// Job states.
const (
	JobPending         JobState = "PENDING"
	JobActive          JobState = "ACTIVE"
	JobFailed          JobState = "FAILED"
	JobPausedOnFailure JobState = "PAUSED_ON_FAILURE"
	JobCompleted       JobState = "COMPLETED"
	JobDeleted         JobState = "DELETED"
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
// allows 50 replication jobs).
const DefaultConcurrency = 1000

// JobSpec says when a VM is replicated.
type JobSpec struct {
	// Frequency between runs; 0 with RunOnce.
	Frequency time.Duration `json:"frequency_ns"`
	// FirstRun is when the first run starts (zero: now).
	FirstRun time.Time `json:"first_run"`
	// RunOnce makes one run, then COMPLETED.
	RunOnce bool `json:"run_once"`
}

// RunRecord is one run of a job.
type RunRecord struct {
	State       RunState   `json:"state"`
	Reason      string     `json:"reason,omitempty"`
	ScheduledAt time.Time  `json:"scheduled_at"`
	Start       time.Time  `json:"start,omitzero"`
	End         time.Time  `json:"end,omitzero"`
	Result      *RunResult `json:"result,omitempty"`
}

// Job is one VM's replication job.
type Job struct {
	ServerID string      `json:"server_id"`
	VM       string      `json:"vm"`
	Spec     JobSpec     `json:"spec"`
	State    JobState    `json:"state"`
	Reason   string      `json:"reason,omitempty"`
	Failures int         `json:"consecutive_failures"`
	NextRun  time.Time   `json:"next_run,omitzero"`
	Runs     []RunRecord `json:"runs"` // newest last, at most keepRuns
}

const keepRuns = 20

// Scheduler runs the jobs of a connector's VMs and keeps their states in
// jobs.json in its state directory (the connector's own record; the
// server sees each VM's replication state and snapshots).
type Scheduler struct {
	StateDir string
	// Concurrency bounds runs in flight; 0 means DefaultConcurrency.
	Concurrency int
	Logger      *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu   sync.Mutex
	jobs map[string]*Job // by server id; guarded by mu
	sem  chan struct{}
}

func (s *Scheduler) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Jobs returns a copy of every job.
func (s *Scheduler) Jobs() []Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Job
	for _, j := range s.jobs {
		c := *j
		c.Runs = append([]RunRecord(nil), j.Runs...)
		out = append(out, c)
	}
	return out
}

func (s *Scheduler) saveLocked() error {
	b, err := json.MarshalIndent(s.jobs, "", "  ")
	if err != nil {
		return err
	}
	if err := pki.WriteFileAtomic(filepath.Join(s.StateDir, "jobs.json"), b, 0o600); err != nil {
		return fmt.Errorf("save jobs: %w", err)
	}
	return nil
}

// Load reads the jobs file (once); Run and Delete call it themselves.
func (s *Scheduler) Load() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jobs != nil {
		return nil
	}
	s.jobs = map[string]*Job{}
	n := s.Concurrency
	if n <= 0 {
		n = DefaultConcurrency
	}
	s.sem = make(chan struct{}, n)
	b, err := os.ReadFile(filepath.Join(s.StateDir, "jobs.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read jobs: %w", err)
	}
	if err := json.Unmarshal(b, &s.jobs); err != nil {
		return fmt.Errorf("jobs file: %w", err)
	}
	return nil
}

func (s *Scheduler) update(id string, f func(j *Job)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.jobs[id])
	if err := s.saveLocked(); err != nil && s.Logger != nil {
		s.Logger.Warn("save jobs", "err", err)
	}
}

// Run runs src's job with spec until ctx ends, the job completes (run
// once) or it pauses on failure. A job already in the state file keeps
// its history and state; a DELETED or PAUSED_ON_FAILURE job does not run.
func (s *Scheduler) Run(ctx context.Context, src *Source, vm string, spec JobSpec) error {
	if err := s.Load(); err != nil {
		return err
	}
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	s.mu.Lock()
	j := s.jobs[src.ServerID]
	if j == nil || j.State == JobCompleted && !spec.RunOnce {
		j = &Job{ServerID: src.ServerID, State: JobPending}
		s.jobs[src.ServerID] = j
	}
	if j.Spec != spec {
		j.NextRun = time.Time{}
	}
	j.VM, j.Spec = vm, spec
	if j.NextRun.IsZero() {
		j.NextRun = spec.FirstRun
		if j.NextRun.IsZero() {
			j.NextRun = s.now()
		}
	}
	state := j.State
	_ = s.saveLocked()
	s.mu.Unlock()
	switch state {
	case JobDeleted, JobPausedOnFailure, JobCompleted:
		log.Info("replication job not running", "vm", vm, "state", state)
		return nil
	}
	for {
		s.mu.Lock()
		next := j.NextRun
		s.mu.Unlock()
		if d := next.Sub(s.now()); d > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
		}
		// Runs that fell due while the connector was down, or while
		// earlier runs overran, are MISSED, not queued.
		now := s.now()
		if spec.Frequency > 0 {
			for next.Add(spec.Frequency).Before(now) {
				missed := next
				s.update(j.ServerID, func(j *Job) {
					j.Runs = appendRun(j.Runs, RunRecord{State: RunMissed, ScheduledAt: missed, Reason: "the connector was not running or a run overran"})
				})
				next = next.Add(spec.Frequency)
			}
		}
		sched := next
		s.update(j.ServerID, func(j *Job) {
			j.Runs = appendRun(j.Runs, RunRecord{State: RunPending, ScheduledAt: sched})
		})
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		s.update(j.ServerID, func(j *Job) {
			j.State = JobActive
			r := &j.Runs[len(j.Runs)-1]
			r.State, r.Start = RunActive, s.now()
		})
		res, err := src.Run(ctx)
		<-s.sem
		if ctx.Err() != nil {
			s.update(j.ServerID, func(j *Job) {
				r := &j.Runs[len(j.Runs)-1]
				r.State, r.End, r.Reason = RunFailed, s.now(), "the connector stopped during the run"
			})
			return nil
		}
		var done bool
		s.update(j.ServerID, func(j *Job) {
			r := &j.Runs[len(j.Runs)-1]
			r.End, r.Result = s.now(), res
			if err != nil {
				r.State, r.Reason = RunFailed, err.Error()
				j.Failures++
				j.State, j.Reason = JobFailed, err.Error()
				if j.Failures >= MaxConsecutiveFailures || errors.Is(err, ErrDisconnected) {
					j.State, done = JobPausedOnFailure, true
				}
				log.Warn("replication run failed", "vm", vm, "err", err, "consecutive_failures", j.Failures)
			} else {
				r.State = RunCompleted
				j.Failures, j.Reason = 0, ""
				j.State = JobActive
				if spec.RunOnce || spec.Frequency <= 0 {
					j.State, done = JobCompleted, true
				}
				log.Info("replication run completed", "vm", vm, "sent_bytes", res.SentBytes(), "seconds", res.End.Sub(res.Start).Seconds())
			}
			j.NextRun = sched.Add(spec.Frequency)
			if err != nil && spec.Frequency <= 0 {
				j.NextRun = s.now().Add(time.Minute)
			}
		})
		if done {
			return nil
		}
	}
}

// Delete marks a job DELETED so it never runs again.
func (s *Scheduler) Delete(serverID string) error {
	if err := s.Load(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[serverID]
	if j == nil {
		return fmt.Errorf("no job for source server %s", serverID)
	}
	j.State = JobDeleted
	return s.saveLocked()
}

func appendRun(runs []RunRecord, r RunRecord) []RunRecord {
	runs = append(runs, r)
	if len(runs) > keepRuns {
		runs = append([]RunRecord(nil), runs[len(runs)-keepRuns:]...)
	}
	return runs
}
