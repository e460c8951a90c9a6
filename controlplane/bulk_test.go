package controlplane

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/jobs"
)

// fakeLaunch is a snapshotter and launcher that succeed at once: the bulk
// routes are about fanning out one job per member and reporting who could
// not start; real launches are tested in e2e/launch_test.go.
type fakeLaunch struct{}

func (fakeLaunch) Snapshot(context.Context, string, bool) (map[string]string, error) {
	return map[string]string{"vda": "snap-1"}, nil
}

func (fakeLaunch) Latest(context.Context, string) (map[string]string, error) {
	return map[string]string{"vda": "snap-1"}, nil
}

func (fakeLaunch) Pick(context.Context, string, map[string]string, time.Time) (map[string]string, error) {
	return map[string]string{"vda": "snap-1"}, nil
}

func (fakeLaunch) InstanceID(srv *ferry.SourceServer, _ ferry.JobInitiator) string {
	return "i-" + srv.ID
}

func (fakeLaunch) Launch(_ context.Context, srv *ferry.SourceServer, snaps map[string]string, kind ferry.JobInitiator, jobID, id string, _ jobs.LogFunc) (*ferry.LaunchedInstance, error) {
	return &ferry.LaunchedInstance{ID: id, JobID: jobID, Kind: kind, Target: "fake", FirstBoot: ferry.FirstBootWaiting, Snapshots: snaps, LaunchedAt: time.Now()}, nil
}

func (fakeLaunch) PostLaunch(context.Context, *ferry.LaunchedInstance, ferry.PostLaunchAction) ferry.PostLaunchResult {
	return ferry.PostLaunchResult{Status: ferry.PostLaunchSuccess}
}

func (fakeLaunch) Terminate(context.Context, *ferry.LaunchedInstance) error { return nil }

func withJobs(e *env) *jobs.Runner {
	r := &jobs.Runner{Store: e.store, Snapshots: fakeLaunch{}, Launcher: fakeLaunch{}}
	e.srv.Jobs = r
	e.t.Cleanup(r.Wait)
	return r
}

func TestBulkStart(t *testing.T) {
	e := newEnv(t)
	withJobs(e)
	ctx := context.Background()
	wave := &ferry.Wave{ID: "wave-1", Name: "w1", CreatedAt: e.now, UpdatedAt: e.now}
	if err := e.store.CreateWave(ctx, wave); err != nil {
		t.Fatal(err)
	}
	app := &ferry.Application{ID: "app-1", Name: "a1", WaveID: "wave-1", CreatedAt: e.now, UpdatedAt: e.now}
	if err := e.store.CreateApplication(ctx, app); err != nil {
		t.Fatal(err)
	}
	empty := &ferry.Wave{ID: "wave-empty", Name: "empty", CreatedAt: e.now, UpdatedAt: e.now}
	if err := e.store.CreateWave(ctx, empty); err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		id      string
		state   ferry.LifecycleState
		app     string
		wave    string
		archive bool
	}{
		{"s-ready", ferry.LifecycleReadyForTest, "", "wave-1", false},
		{"s-app", ferry.LifecycleReadyForCutover, "app-1", "", false},
		{"s-syncing", ferry.LifecycleNotReady, "", "wave-1", false},
		{"s-archived", ferry.LifecycleDisconnected, "", "wave-1", true},
	} {
		e.addServer(m.id, m.state)
		if _, err := e.store.UpdateServer(ctx, m.id, func(s *ferry.SourceServer) error {
			s.ApplicationID, s.WaveID, s.Archived = m.app, m.wave, m.archive
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name        string
		path        string
		role        ferry.Role
		wantStatus  int
		wantStarted []string
		wantSkipped []string
	}{
		{"viewer refused", "/waves/wave-1/start-test", ferry.RoleViewer, http.StatusForbidden, nil, nil},
		{"unknown wave", "/waves/nope/start-test", ferry.RoleOperator, http.StatusNotFound, nil, nil},
		{"empty wave", "/waves/wave-empty/start-test", ferry.RoleOperator, http.StatusOK, nil, nil},
		{"wave test", "/waves/wave-1/start-test", ferry.RoleOperator, http.StatusAccepted, []string{"s-app", "s-ready"}, []string{"s-syncing"}},
		{"application cutover", "/applications/app-1/start-cutover", ferry.RoleOperator, http.StatusOK, nil, []string{"s-app"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.srv.Jobs.Wait()
			status, body := e.do(http.MethodPost, tt.path, e.tokens[tt.role], nil)
			if status != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", status, tt.wantStatus, body)
			}
			if status >= 300 {
				return
			}
			var got api.BulkJobResult
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			var started, skipped []string
			jobIDs := map[string]bool{}
			for _, s := range got.Started {
				started = append(started, s.SourceServerID)
				if s.JobID == "" || jobIDs[s.JobID] {
					t.Errorf("server %s: job id %q is empty or shared", s.SourceServerID, s.JobID)
				}
				jobIDs[s.JobID] = true
			}
			for _, s := range got.NotStarted {
				skipped = append(skipped, s.SourceServerID)
				if s.Reason == "" {
					t.Errorf("server %s: no reason given", s.SourceServerID)
				}
			}
			if !equalStrings(started, tt.wantStarted) || !equalStrings(skipped, tt.wantSkipped) {
				t.Fatalf("started %v, not started %v; want %v, %v (%s)", started, skipped, tt.wantStarted, tt.wantSkipped, body)
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestStartJobChosenSnapshots checks the request checks of a launch from
// chosen snapshots: each bad combination is refused with what to fix, and
// nothing is started.
func TestStartJobChosenSnapshots(t *testing.T) {
	e := newEnv(t)
	withJobs(e)
	e.addServer("s-1", ferry.LifecycleReadyForTest)
	e.addServer("s-2", ferry.LifecycleReadyForTest)
	tok := e.tokens[ferry.RoleOperator]
	for _, tc := range []struct {
		name, path, body, want string
		status                 int
	}{
		{"snapshots and point in time", "/jobs/start-test", `{"source_server_ids":["s-1"],"snapshots":{"":"00000000000000a1"},"point_in_time":"2026-01-01T00:00:00Z"}`, "one way", 400},
		{"point in time and latest", "/jobs/start-test", `{"source_server_ids":["s-1"],"use_latest_snapshot":true,"point_in_time":"2026-01-01T00:00:00Z"}`, "one way", 400},
		{"snapshots for two servers", "/jobs/start-test", `{"source_server_ids":["s-1","s-2"],"snapshots":{"vda":"x"}}`, "one source server", 400},
		{"point in time in the future", "/jobs/start-cutover", `{"source_server_ids":["s-1"],"point_in_time":"2999-01-01T00:00:00Z"}`, "in the future", 400},
		{"snapshots on terminate", "/jobs/terminate", `{"source_server_ids":["s-1"],"snapshots":{"vda":"x"}}`, "do not apply to terminate", 400},
		{"empty snapshot id", "/jobs/start-test", `{"source_server_ids":["s-1"],"snapshots":{"vda":""}}`, "snapshots[vda]", 400},
		{"not a time", "/jobs/start-test", `{"source_server_ids":["s-1"],"point_in_time":"yesterday"}`, `parsing time \"yesterday\"`, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := e.do("POST", tc.path, tok, []byte(tc.body))
			if status != tc.status || !strings.Contains(string(body), tc.want) {
				t.Errorf("got %d %s, want %d with %q", status, body, tc.status, tc.want)
			}
		})
	}
	jl, _, err := e.store.ListJobs(context.Background(), ferry.JobFilter{})
	if err != nil || len(jl) != 0 {
		t.Errorf("jobs after refused requests: %d (%v), want none", len(jl), err)
	}
	// A good request launches from the snapshots the replication server
	// picked.
	status, body := e.do("POST", "/jobs/start-test", tok, []byte(`{"source_server_ids":["s-1"],"point_in_time":"2026-01-01T00:00:00Z"}`))
	if status != 202 {
		t.Fatalf("start-test at a point in time: %d %s", status, body)
	}
	e.srv.Jobs.Wait()
	srv, err := e.store.Server(context.Background(), "s-1")
	if err != nil || srv.Launched == nil || srv.Launched.Snapshots["vda"] != "snap-1" {
		t.Fatalf("launched %+v (%v), want from snap-1", srv.Launched, err)
	}
	log, err := e.store.JobLog(context.Background(), srv.Launched.JobID)
	if err != nil || !slices.ContainsFunc(log, func(l ferry.JobLogItem) bool { return strings.Contains(l.Message, "using the chosen snapshots") }) {
		t.Errorf("job log %v (%v) does not say the chosen snapshots were used", log, err)
	}
}
