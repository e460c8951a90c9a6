package connector

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)

func TestDecide(t *testing.T) {
	hourly := JobSpec{Frequency: time.Hour}
	tests := []struct {
		name  string
		job   *Job
		flush bool
		now   time.Time
		want  Decision
	}{
		{"no job", nil, false, t0, Decision{}},
		{"no job, flush", nil, true, t0, Decision{}},
		{"deleted", &Job{State: JobDeleted, Spec: hourly}, true, t0, Decision{Drop: true}},
		{"pending, first run later", &Job{State: JobPending, Spec: hourly, NextRun: t0.Add(time.Minute)}, false, t0, Decision{Wake: t0.Add(time.Minute)}},
		{"pending, first run due", &Job{State: JobPending, Spec: hourly, NextRun: t0}, false, t0, Decision{Run: true, Scheduled: t0}},
		{"two slots missed", &Job{State: JobActive, Spec: hourly, NextRun: t0}, false, t0.Add(2*time.Hour + time.Minute),
			Decision{Run: true, Scheduled: t0.Add(2 * time.Hour), Missed: []time.Time{t0, t0.Add(time.Hour)}}},
		{"exactly on the next slot", &Job{State: JobActive, Spec: hourly, NextRun: t0}, false, t0.Add(time.Hour),
			Decision{Run: true, Scheduled: t0.Add(time.Hour), Missed: []time.Time{t0}}},
		{"run once late: no misses", &Job{State: JobPending, Spec: JobSpec{RunOnce: true}, NextRun: t0}, false, t0.Add(5 * time.Hour), Decision{Run: true, Scheduled: t0}},
		{"flush before schedule", &Job{State: JobActive, Spec: hourly, NextRun: t0.Add(time.Hour)}, true, t0, Decision{Run: true, Reason: "the server asked for a drained point (FLUSH: test launch or cutover)"}},
		{"flush on a stopped job", &Job{State: JobPending, Stopped: true, Spec: hourly}, true, t0, Decision{Run: true, Reason: "the server asked for a drained point (FLUSH: test launch or cutover)"}},
		{"flush on a completed job", &Job{State: JobCompleted, Spec: JobSpec{RunOnce: true}}, true, t0, Decision{Run: true, Reason: "the server asked for a drained point (FLUSH: test launch or cutover)"}},
		{"start", &Job{State: JobFailed, Spec: hourly, RunNow: true, NextRun: t0.Add(time.Hour)}, false, t0, Decision{Run: true, Reason: "started by the operator"}},
		{"stopped", &Job{State: JobPending, Stopped: true, Spec: hourly, NextRun: t0}, false, t0.Add(3 * time.Hour), Decision{}},
		{"completed", &Job{State: JobCompleted, Spec: JobSpec{RunOnce: true}, NextRun: t0}, false, t0, Decision{}},
		{"paused on failure", &Job{State: JobPausedOnFailure, Spec: hourly, NextRun: t0}, false, t0, Decision{}},
		{"failed: next slot still runs", &Job{State: JobFailed, Failures: 2, Spec: hourly, NextRun: t0}, false, t0, Decision{Run: true, Scheduled: t0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Decide(tt.job, tt.flush, tt.now); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFinish(t *testing.T) {
	boom := errors.New("boom")
	hourly := JobSpec{Frequency: time.Hour}
	once := JobSpec{RunOnce: true}
	tests := []struct {
		name      string
		job       Job
		scheduled time.Time
		err       error
		state     JobState
		failures  int
		next      time.Time
		reason    string
	}{
		{"recurring ok", Job{State: JobActive, Spec: hourly, NextRun: t0}, t0, nil, JobActive, 0, t0.Add(time.Hour), ""},
		{"recurring ok clears failures", Job{State: JobFailed, Failures: 2, Reason: "x", Spec: hourly}, t0, nil, JobActive, 0, t0.Add(time.Hour), ""},
		{"recurring fails", Job{State: JobActive, Spec: hourly}, t0, boom, JobFailed, 1, t0.Add(time.Hour), "boom"},
		{"third failure pauses", Job{State: JobFailed, Failures: 2, Spec: hourly}, t0, boom, JobPausedOnFailure, 3, t0.Add(time.Hour), "3 runs failed in a row; last: boom"},
		{"disconnected pauses at once", Job{State: JobActive, Spec: hourly}, t0, fmt.Errorf("run: %w", ErrDisconnected), JobPausedOnFailure, 1, t0.Add(time.Hour), "the server disconnected this VM: run: disconnected from the service"},
		{"run once ok", Job{State: JobActive, Spec: once, NextRun: t0}, t0, nil, JobCompleted, 0, t0, ""},
		{"run once fails: retried", Job{State: JobActive, Spec: once, NextRun: t0}, t0, boom, JobFailed, 1, t0.Add(5*time.Minute + RunFailedRetry), "boom"},
		{"on demand keeps the schedule", Job{State: JobActive, Spec: hourly, NextRun: t0.Add(30 * time.Minute)}, time.Time{}, nil, JobActive, 0, t0.Add(30 * time.Minute), ""},
		{"stopped during the run", Job{State: JobActive, Stopped: true, Spec: hourly, NextRun: t0}, t0, nil, JobPending, 0, t0, "stopped by the operator; 'ferry connector jobs start' resumes it"},
		{"deleted during the run", Job{State: JobDeleted, Reason: "deleted by the operator", Spec: hourly, NextRun: t0}, t0, boom, JobDeleted, 0, t0, "deleted by the operator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := tt.job
			Finish(&j, tt.scheduled, tt.err, t0.Add(5*time.Minute))
			if j.State != tt.state || j.Failures != tt.failures || !j.NextRun.Equal(tt.next) || j.Reason != tt.reason {
				t.Fatalf("got state %s failures %d next %s reason %q; want %s %d %s %q", j.State, j.Failures, j.NextRun, j.Reason, tt.state, tt.failures, tt.next, tt.reason)
			}
		})
	}
}

func TestJobSpecCheck(t *testing.T) {
	tests := []struct {
		spec JobSpec
		want string
	}{
		{JobSpec{Frequency: time.Hour}, ""},
		{JobSpec{RunOnce: true, Keep: 3}, ""},
		{JobSpec{}, "at least 1s"},
		{JobSpec{Frequency: -time.Second}, "positive"},
		{JobSpec{RunOnce: true, Frequency: time.Hour}, "no frequency"},
		{JobSpec{Frequency: time.Hour, Keep: -1}, "keep -1"},
	}
	for _, tt := range tests {
		err := tt.spec.Check()
		if (tt.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want %q", tt.spec, err, tt.want)
		}
	}
}

// The book: create, start, stop, delete through it, as the CLI does, with
// a concurrent writer (the running connector) losing nothing.
func TestJobsBook(t *testing.T) {
	js := &Jobs{Dir: t.TempDir()}
	if err := js.Update(func(bk *Book) error {
		bk.VMs["s-1"] = &VMRecord{ServerID: "s-1", Name: "web", MachineID: "qemu-1"}
		bk.VMs["s-2"] = &VMRecord{ServerID: "s-2", Name: "db", MachineID: "qemu-2"}
		bk.VMs["s-3"] = &VMRecord{ServerID: "s-3", Name: "db", MachineID: "qemu-3"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Create("nope", JobSpec{Frequency: time.Hour}, t0); err == nil || !strings.Contains(err.Error(), `no VM "nope"`) {
		t.Fatalf("create for an unknown VM: %v", err)
	}
	if _, err := js.Create("db", JobSpec{Frequency: time.Hour}, t0); err == nil || !strings.Contains(err.Error(), "2 VMs are named") {
		t.Fatalf("create for an ambiguous name: %v", err)
	}
	if _, err := js.Create("web", JobSpec{}, t0); err == nil {
		t.Fatal("a job without frequency or run-once was created")
	}
	j, err := js.Create("web", JobSpec{Frequency: time.Hour, Keep: 2}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if j.ServerID != "s-1" || j.State != JobPending || !j.NextRun.Equal(t0) {
		t.Fatalf("created %+v", j)
	}
	if _, err := js.Create("s-1", JobSpec{RunOnce: true}, t0); err == nil || !strings.Contains(err.Error(), "already has") {
		t.Fatalf("second job for a VM: %v", err)
	}
	// The connector appends runs while the CLI stops and starts.
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range 50 {
			if err := js.Update(func(bk *Book) error {
				bk.Jobs["s-1"].Runs = appendRun(bk.Jobs["s-1"].Runs, RunRecord{State: RunCompleted, ScheduledAt: t0.Add(time.Duration(i) * time.Hour)})
				return nil
			}); err != nil {
				t.Error(err)
			}
		}
	}()
	go func() {
		defer wg.Done()
		other := &Jobs{Dir: js.Dir} // another process's view
		for range 25 {
			if err := other.Stop("web"); err != nil {
				t.Error(err)
			}
			if err := other.Start("s-1"); err != nil {
				t.Error(err)
			}
		}
	}()
	wg.Wait()
	j, err = js.Job("s-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Runs) != keepRuns || !j.Runs[keepRuns-1].ScheduledAt.Equal(t0.Add(49*time.Hour)) || !j.RunNow || j.Stopped {
		t.Fatalf("after concurrent changes: %d runs (last %v), run now %v, stopped %v", len(j.Runs), j.Runs[len(j.Runs)-1].ScheduledAt, j.RunNow, j.Stopped)
	}
	if err := js.Delete("web"); err != nil {
		t.Fatal(err)
	}
	if err := js.Start("web"); err == nil {
		t.Fatal("a DELETED job started")
	}
	if j, _ := js.Job("s-1"); j.State != JobDeleted {
		t.Fatalf("state after delete: %s", j.State)
	}
	if _, err := js.Create("web", JobSpec{RunOnce: true}, t0); err != nil {
		t.Fatalf("a new job after delete: %v", err)
	}
	if err := js.Stop("s-2"); !errors.Is(err, ErrNoJob) {
		t.Fatalf("stop without a job: %v", err)
	}
}

func TestParseBook(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"version 1", `{"s-1":{"server_id":"s-1","vm":"web","spec":{"frequency_ns":3600000000000},"state":"ACTIVE","runs":[]}}`, ""},
		{"version 2", `{"version":2,"vms":{"s-1":{"server_id":"s-1","name":"web"}},"jobs":{}}`, ""},
		{"future", `{"version":3,"vms":{}}`, "newer"},
		{"bad state", `{"version":2,"jobs":{"s-1":{"state":"RUNNING","spec":{"run_once":true}}}}`, `unknown state "RUNNING"`},
		{"bad spec", `{"version":2,"jobs":{"s-1":{"state":"ACTIVE","spec":{"frequency_ns":-5}}}}`, "positive"},
		{"null job", `{"version":2,"jobs":{"s-1":null}}`, "null"},
		{"not json", `{"version":`, "jobs file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bk, err := ParseBook([]byte(tt.in))
			if tt.want == "" {
				if err != nil || bk.VMs == nil || bk.Jobs == nil || bk.Version != bookVersion {
					t.Fatalf("%+v, %v", bk, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
		})
	}
}

// FuzzParseBook: the jobs file is shared with whoever can write the state
// directory; no content may panic the connector, and what parses
// round-trips.
func FuzzParseBook(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzParseBook.
	f.Fuzz(func(t *testing.T, b []byte) {
		bk, err := ParseBook(b)
		if err != nil {
			return
		}
		out, err := json.Marshal(bk)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseBook(out); err != nil {
			t.Fatalf("a parsed book does not parse again: %v\n%s", err, out)
		}
	})
}
