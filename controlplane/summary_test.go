package controlplane

import (
	"context"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

func srv(l ferry.LifecycleState, r ferry.ReplicationState, mod ...func(*ferry.SourceServer)) *ferry.SourceServer {
	s := &ferry.SourceServer{Lifecycle: l, Replication: ferry.ReplicationInfo{State: r}}
	for _, m := range mod {
		m(s)
	}
	return s
}

func TestSummarize(t *testing.T) {
	const threshold = 5 * time.Minute
	lag := func(sec float64) func(*ferry.SourceServer) {
		return func(s *ferry.SourceServer) { s.Replication.LagSeconds = sec }
	}
	errCode := func(s *ferry.SourceServer) { s.Replication.ErrorCode = ferry.ErrCodeAgentNotSeen }
	archived := func(s *ferry.SourceServer) { s.Archived = true }
	tests := []struct {
		name         string
		servers      []*ferry.SourceServer
		health       api.GroupHealth
		progress     api.GroupProgress
		count, errs  int
		lagging      int
		notReadyWant int
	}{
		{"empty", nil, api.HealthHealthy, api.ProgressNotStarted, 0, 0, 0, 0},
		{"syncing", []*ferry.SourceServer{srv(ferry.LifecycleNotReady, ferry.ReplicationInitialSync)}, api.HealthHealthy, api.ProgressNotStarted, 1, 0, 0, 1},
		{"continuous ready", []*ferry.SourceServer{
			srv(ferry.LifecycleReadyForTest, ferry.ReplicationContinuous),
			srv(ferry.LifecycleNotReady, ferry.ReplicationInitialSync),
		}, api.HealthHealthy, api.ProgressInProgress, 2, 0, 0, 1},
		{"backlog lags", []*ferry.SourceServer{srv(ferry.LifecycleReadyForTest, ferry.ReplicationBacklog)}, api.HealthLagging, api.ProgressInProgress, 1, 0, 1, 0},
		{"rescan lags", []*ferry.SourceServer{srv(ferry.LifecycleTesting, ferry.ReplicationRescan)}, api.HealthLagging, api.ProgressInProgress, 1, 0, 1, 0},
		{"lag over threshold", []*ferry.SourceServer{srv(ferry.LifecycleReadyForTest, ferry.ReplicationContinuous, lag(301))}, api.HealthLagging, api.ProgressInProgress, 1, 0, 1, 0},
		{"lag at threshold", []*ferry.SourceServer{srv(ferry.LifecycleReadyForTest, ferry.ReplicationContinuous, lag(300))}, api.HealthHealthy, api.ProgressInProgress, 1, 0, 0, 0},
		{"error code beats lag", []*ferry.SourceServer{
			srv(ferry.LifecycleReadyForTest, ferry.ReplicationBacklog),
			srv(ferry.LifecycleNotReady, ferry.ReplicationInitialSync, errCode),
		}, api.HealthError, api.ProgressInProgress, 2, 1, 1, 1},
		{"stalled", []*ferry.SourceServer{srv(ferry.LifecycleNotReady, ferry.ReplicationStalled)}, api.HealthError, api.ProgressNotStarted, 1, 1, 0, 1},
		{"replication disconnected", []*ferry.SourceServer{srv(ferry.LifecycleReadyForTest, ferry.ReplicationDisconnected)}, api.HealthError, api.ProgressInProgress, 1, 1, 0, 0},
		{"disconnected lifecycle is not an error", []*ferry.SourceServer{srv(ferry.LifecycleDisconnected, ferry.ReplicationDisconnected)}, api.HealthHealthy, api.ProgressNotStarted, 1, 0, 0, 0},
		{"all cutover", []*ferry.SourceServer{
			srv(ferry.LifecycleCutover, ferry.ReplicationStopped),
			srv(ferry.LifecycleCutover, ferry.ReplicationDisconnected),
		}, api.HealthHealthy, api.ProgressCompleted, 2, 0, 0, 0},
		{"cutover and archived", []*ferry.SourceServer{
			srv(ferry.LifecycleCutover, ferry.ReplicationStopped),
			srv(ferry.LifecycleNotReady, ferry.ReplicationStalled, archived),
		}, api.HealthHealthy, api.ProgressCompleted, 1, 0, 0, 0},
		{"some cutover", []*ferry.SourceServer{
			srv(ferry.LifecycleCutover, ferry.ReplicationStopped),
			srv(ferry.LifecycleNotReady, ferry.ReplicationContinuous),
		}, api.HealthHealthy, api.ProgressInProgress, 2, 0, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Summarize(tt.servers, threshold)
			if got.Health != tt.health || got.Progress != tt.progress {
				t.Errorf("health, progress = %s, %s; want %s, %s", got.Health, got.Progress, tt.health, tt.progress)
			}
			if got.Servers != tt.count || got.ErrorServers != tt.errs || got.LaggingServers != tt.lagging {
				t.Errorf("counts servers/error/lagging = %d/%d/%d; want %d/%d/%d", got.Servers, got.ErrorServers, got.LaggingServers, tt.count, tt.errs, tt.lagging)
			}
			if n := got.Lifecycle[ferry.LifecycleNotReady]; n != tt.notReadyWant {
				t.Errorf("NOT_READY count %d, want %d", n, tt.notReadyWant)
			}
		})
	}
}

// Applications and waves carry their summary on get and list; a wave
// counts its own servers and those of its applications.
func TestGroupSummaryAPI(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	op := e.client(ferry.RoleOperator)
	var wave ferry.Wave
	if err := op.Do(ctx, "POST", "/waves", nil, api.GroupRequest{Name: ptr("w1")}, &wave); err != nil {
		t.Fatal(err)
	}
	var app ferry.Application
	if err := op.Do(ctx, "POST", "/applications", nil, api.GroupRequest{Name: ptr("billing"), WaveID: &wave.ID}, &app); err != nil {
		t.Fatal(err)
	}
	e.addServer("s-1", ferry.LifecycleReadyForTest)
	e.addServer("s-2", ferry.LifecycleNotReady)
	e.addServer("s-3", ferry.LifecycleCutover)
	for _, id := range []string{"s-1", "s-2"} {
		if _, err := e.store.UpdateServer(ctx, id, func(s *ferry.SourceServer) error {
			s.ApplicationID = app.ID
			if id == "s-2" {
				s.Replication.State = ferry.ReplicationStalled
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.store.UpdateServer(ctx, "s-3", func(s *ferry.SourceServer) error { s.WaveID = wave.ID; return nil }); err != nil {
		t.Fatal(err)
	}
	viewer := e.client(ferry.RoleViewer)
	var a api.ApplicationStatus
	if err := viewer.Do(ctx, "GET", "/applications/"+app.ID, nil, nil, &a); err != nil {
		t.Fatal(err)
	}
	if a.Name != "billing" || a.Summary.Servers != 2 || a.Summary.Health != api.HealthError || a.Summary.Progress != api.ProgressInProgress {
		t.Errorf("application %+v", a)
	}
	var w api.WaveStatus
	if err := viewer.Do(ctx, "GET", "/waves/"+wave.ID, nil, nil, &w); err != nil {
		t.Fatal(err)
	}
	if w.Summary.Servers != 3 || w.Summary.Lifecycle[ferry.LifecycleCutover] != 1 || w.Summary.Health != api.HealthError {
		t.Errorf("wave %+v", w)
	}
	var wl api.List[api.WaveStatus]
	if err := viewer.Do(ctx, "GET", "/waves", nil, nil, &wl); err != nil {
		t.Fatal(err)
	}
	if len(wl.Items) != 1 || wl.Items[0].Summary.Servers != 3 {
		t.Errorf("wave list %+v", wl)
	}
	var al api.List[api.ApplicationStatus]
	if err := viewer.Do(ctx, "GET", "/applications", nil, nil, &al); err != nil {
		t.Fatal(err)
	}
	if len(al.Items) != 1 || al.Items[0].Summary.Servers != 2 || al.Items[0].Summary.ErrorServers != 1 {
		t.Errorf("application list %+v", al)
	}
}

func ptr[T any](v T) *T { return &v }
