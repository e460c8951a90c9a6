package jobs_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/jobs"
	"github.com/ferrymigrate/ferry/sqlite"
)

// recordingLauncher records Terminate calls; Launch is never reached here.
type recordingLauncher struct {
	mu         sync.Mutex
	terminated []*ferry.LaunchedInstance
	err        error
}

func (l *recordingLauncher) InstanceID(*ferry.SourceServer, ferry.JobInitiator) string { return "" }
func (l *recordingLauncher) Launch(context.Context, *ferry.SourceServer, map[string]string, ferry.JobInitiator, string, string, jobs.LogFunc) (*ferry.LaunchedInstance, error) {
	return nil, errors.New("not in this test")
}
func (l *recordingLauncher) PostLaunch(context.Context, *ferry.LaunchedInstance, ferry.PostLaunchAction) ferry.PostLaunchResult {
	return ferry.PostLaunchResult{}
}
func (l *recordingLauncher) Terminate(_ context.Context, inst *ferry.LaunchedInstance) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.terminated = append(l.terminated, inst)
	return l.err
}

// TestRecoverTerminatesInterruptedLaunches: a control plane killed while
// a launch ran leaves the job started and the launch in progress, with
// the instance ID the runner recorded before Launch. Recover marks the
// launch FAILED and terminates that instance on the server's target (or
// logs, with the ID, that it could not), and leaves launches that had no
// instance yet alone.
func TestRecoverTerminatesInterruptedLaunches(t *testing.T) {
	for _, tc := range []struct {
		name    string
		err     error
		wantLog string
	}{
		{"terminated", nil, "terminated instance test-aa-1"},
		{"target refuses", errors.New("libvirt: connection refused"), "could not be terminated: libvirt: connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			st, err := sqlite.Open(filepath.Join(t.TempDir(), "db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			for _, id := range []string{"s-aa", "s-bb"} {
				srv := &ferry.SourceServer{ID: id, MachineID: "m-" + id, Hostname: id, Lifecycle: ferry.LifecycleReadyForTest,
					LaunchSetup: ferry.LaunchSettings{Target: "libvirt"}}
				if err := st.CreateServer(ctx, srv); err != nil {
					t.Fatal(err)
				}
			}
			job := &ferry.Job{ID: "j-1", Type: ferry.JobLaunch, InitiatedBy: ferry.InitiatedByStartTest, Status: ferry.JobStarted, CreatedAt: time.Now(),
				Servers: []ferry.JobServer{
					{SourceServerID: "s-aa", LaunchStatus: ferry.LaunchInProgress, InstanceID: "test-aa-1"},
					{SourceServerID: "s-bb", LaunchStatus: ferry.LaunchInProgress}, // killed before its instance had an ID
				}}
			if err := st.CreateJob(ctx, job); err != nil {
				t.Fatal(err)
			}
			l := &recordingLauncher{err: tc.err}
			r := &jobs.Runner{Store: st, Launcher: l}
			if n, err := r.Recover(ctx); err != nil || n != 1 {
				t.Fatalf("Recover = %d, %v; want 1 job", n, err)
			}
			if len(l.terminated) != 1 || l.terminated[0].ID != "test-aa-1" || l.terminated[0].Target != "libvirt" {
				t.Fatalf("terminated %+v; want test-aa-1 on libvirt only", l.terminated)
			}
			got, err := st.Job(ctx, "j-1")
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != ferry.JobCompleted {
				t.Errorf("job %s, want COMPLETED", got.Status)
			}
			for _, js := range got.Servers {
				if js.LaunchStatus != ferry.LaunchFailed {
					t.Errorf("%s: launch %s, want FAILED", js.SourceServerID, js.LaunchStatus)
				}
			}
			log, err := st.JobLog(ctx, "j-1")
			if err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, item := range log {
				if item.SourceServerID == "s-aa" && strings.Contains(item.Message, tc.wantLog) {
					found = true
				}
			}
			if !found {
				t.Errorf("no job log line for s-aa containing %q: %+v", tc.wantLog, log)
			}
		})
	}
}

// TestRecoverTerminatesUnrecordedInstances: a control plane killed after
// a launch recorded its instance in the job as LAUNCHED but before the
// server's record pointed to it leaves an instance nothing else knows of.
// Recover terminates it and marks the launch FAILED; an instance the
// server's record holds stays, LAUNCHED.
func TestRecoverTerminatesUnrecordedInstances(t *testing.T) {
	ctx := t.Context()
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, tc := range []struct {
		id       string
		launched *ferry.LaunchedInstance // the server's record
	}{
		{"s-aa", nil},
		{"s-bb", &ferry.LaunchedInstance{ID: "test-bb-1", Kind: ferry.InitiatedByStartTest}},
		{"s-cc", &ferry.LaunchedInstance{ID: "test-cc-0", Kind: ferry.InitiatedByStartTest}},
	} {
		srv := &ferry.SourceServer{ID: tc.id, MachineID: "m-" + tc.id, Hostname: tc.id, Lifecycle: ferry.LifecycleReadyForTest,
			LaunchSetup: ferry.LaunchSettings{Target: "qemu"}, Launched: tc.launched}
		if err := st.CreateServer(ctx, srv); err != nil {
			t.Fatal(err)
		}
	}
	job := &ferry.Job{ID: "j-1", Type: ferry.JobLaunch, InitiatedBy: ferry.InitiatedByStartTest, Status: ferry.JobStarted, CreatedAt: time.Now(),
		Servers: []ferry.JobServer{
			{SourceServerID: "s-aa", LaunchStatus: ferry.LaunchLaunched, InstanceID: "test-aa-1"}, // no record
			{SourceServerID: "s-bb", LaunchStatus: ferry.LaunchLaunched, InstanceID: "test-bb-1"}, // recorded
			{SourceServerID: "s-cc", LaunchStatus: ferry.LaunchLaunched, InstanceID: "test-cc-1"}, // the record still has the one it replaces
		}}
	if err := st.CreateJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	l := &recordingLauncher{}
	r := &jobs.Runner{Store: st, Launcher: l}
	if n, err := r.Recover(ctx); err != nil || n != 1 {
		t.Fatalf("Recover = %d, %v; want 1 job", n, err)
	}
	var ids []string
	for _, inst := range l.terminated {
		ids = append(ids, inst.ID)
		if inst.Target != "qemu" {
			t.Errorf("%s terminated on target %q, want its server's", inst.ID, inst.Target)
		}
	}
	if strings.Join(ids, ",") != "test-aa-1,test-cc-1" {
		t.Fatalf("terminated %v; want test-aa-1 and test-cc-1", ids)
	}
	got, err := st.Job(ctx, "j-1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]ferry.LaunchStatus{"s-aa": ferry.LaunchFailed, "s-bb": ferry.LaunchLaunched, "s-cc": ferry.LaunchFailed}
	for _, js := range got.Servers {
		if js.LaunchStatus != want[js.SourceServerID] {
			t.Errorf("%s: launch %s, want %s", js.SourceServerID, js.LaunchStatus, want[js.SourceServerID])
		}
	}
}
