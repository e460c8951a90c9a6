package controlplane

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

func TestDiagnose(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	// series makes n samples 10 s apart ending now, lag rising by step.
	series := func(n int, lag0, step, tput, busy float64) []api.HistorySample {
		var out []api.HistorySample
		for i := range n {
			out = append(out, api.HistorySample{Time: now.Add(time.Duration(i-n+1) * 10 * time.Second), LagSeconds: lag0 + step*float64(i),
				ThroughputBytesPerSec: tput, StagingBusy: busy, State: ferry.ReplicationContinuous})
		}
		return out
	}
	srv := func(state ferry.ReplicationState, throttle int64) *ferry.SourceServer {
		s := &ferry.SourceServer{Replication: ferry.ReplicationInfo{State: state}}
		s.ReplicationSetup.BandwidthBytesPerSec = throttle
		return s
	}
	tests := []struct {
		name        string
		srv         *ferry.SourceServer
		samples     []api.HistorySample
		want        api.Bottleneck
		wantLimited bool
	}{
		{"no history", srv(ferry.ReplicationContinuous, 0), series(1, 0, 0, 0, 0), api.BottleneckUnknown, false},
		{"keeps up", srv(ferry.ReplicationContinuous, 0), series(20, 2, 0, 1e6, 0.1), api.BottleneckNone, false},
		{"paused", srv(ferry.ReplicationPaused, 0), series(20, 2, 5, 0, 0), api.BottleneckNotSending, false},
		{"throttle", srv(ferry.ReplicationBacklog, 1<<20), series(20, 10, 3, 1<<20, 0.1), api.BottleneckThrottle, false},
		{"staging write", srv(ferry.ReplicationBacklog, 0), series(20, 10, 3, 5<<20, 0.95), api.BottleneckStagingWrite, false},
		{"source or network", srv(ferry.ReplicationBacklog, 0), series(20, 10, 3, 5<<20, 0.2), api.BottleneckSourceOrNetwork, true},
		{"old samples ignored", srv(ferry.ReplicationContinuous, 0), append(series(40, 100, -2, 0, 0)[:5], series(5, 1, 0, 0, 0)...), api.BottleneckNone, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Diagnose(tt.srv, tt.samples, now)
			if got.Bottleneck != tt.want || got.Limited != tt.wantLimited || got.Summary == "" {
				t.Fatalf("got %+v, want %s (limited %v)", got, tt.want, tt.wantLimited)
			}
		})
	}
}

type fakeDataPlane struct{ received, busy int64 }

func (f *fakeDataPlane) Traffic(string) Traffic {
	return Traffic{ReceivedBytes: f.received, StagingBusy: time.Duration(f.busy), Connected: true}
}
func (f *fakeDataPlane) Sessions() int { return 1 }

type fakeUsage struct{}

func (fakeUsage) StagingUsage(context.Context) ([]DiskStaging, int64, error) {
	return []DiskStaging{{DiskID: "s-1.vda", LogicalBytes: 100, StoredBytes: 40, JournalBytes: 2, Snapshots: 3}, {DiskID: "s-10.vda", LogicalBytes: 7}}, 50, nil
}

func TestHistoryUsageConsole(t *testing.T) {
	e := newEnv(t)
	dp := &fakeDataPlane{}
	e.srv.DataPlane, e.srv.Usage, e.srv.HistorySamples = dp, fakeUsage{}, 3
	e.addServer("s-1", ferry.LifecycleReadyForTest)
	ctx := context.Background()
	for i := range 5 {
		dp.received += 10 << 20
		dp.busy += int64(5 * time.Second)
		if err := e.srv.SampleHistory(ctx); err != nil {
			t.Fatal(err)
		}
		if i < 4 {
			e.now = e.now.Add(10 * time.Second)
		}
	}
	status, body := e.do(http.MethodGet, "/servers/s-1/history", e.tokens[ferry.RoleViewer], nil)
	if status != http.StatusOK {
		t.Fatalf("history: %d %s", status, body)
	}
	var h api.ServerHistory
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatal(err)
	}
	if len(h.Samples) != 3 {
		t.Fatalf("%d samples, want the ring's 3", len(h.Samples))
	}
	if got := h.Samples[2].ThroughputBytesPerSec; got != 1<<20 {
		t.Errorf("throughput %v, want 1 MiB/s", got)
	}
	if got := h.Samples[2].StagingBusy; got != 0.5 {
		t.Errorf("staging busy %v, want 0.5", got)
	}

	status, body = e.do(http.MethodGet, "/usage?format=csv", e.tokens[ferry.RoleViewer], nil)
	if status != http.StatusOK {
		t.Fatalf("usage: %d %s", status, body)
	}
	rows, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
	if err != nil || len(rows) != 2 {
		t.Fatalf("usage csv %q: %v", body, err)
	}
	if want := []string{"s-1", "host-s-1", "0", "100", "42", "3", "0.00", "52428800"}; strings.Join(rows[1], ",") != strings.Join(want, ",") {
		t.Errorf("usage row %v, want %v", rows[1], want)
	}
	status, _ = e.do(http.MethodGet, "/usage?format=xml", e.tokens[ferry.RoleViewer], nil)
	if status != http.StatusBadRequest {
		t.Errorf("format=xml: %d, want 400", status)
	}

	console := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(console, []byte(strings.Repeat("x", 3000)+"login: "), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, query string
		launched    *ferry.LaunchedInstance
		wantStatus  int
		wantLen     int
	}{
		{"no instance", "", nil, http.StatusNotFound, 0},
		{"tail", "?kib=1", &ferry.LaunchedInstance{ID: "i-1", ConsoleLog: console}, http.StatusOK, 1024},
		{"whole", "", &ferry.LaunchedInstance{ID: "i-1", ConsoleLog: console}, http.StatusOK, 3007},
		{"bad kib", "?kib=0", &ferry.LaunchedInstance{ID: "i-1", ConsoleLog: console}, http.StatusBadRequest, 0},
		{"gone", "", &ferry.LaunchedInstance{ID: "i-1", ConsoleLog: console + ".gone"}, http.StatusNotFound, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := e.store.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error { s.Launched = tt.launched; return nil }); err != nil {
				t.Fatal(err)
			}
			status, body := e.do(http.MethodGet, "/servers/s-1/console"+tt.query, e.tokens[ferry.RoleViewer], nil)
			if status != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", status, tt.wantStatus, body)
			}
			if status == http.StatusOK && (len(body) != tt.wantLen || !strings.HasSuffix(string(body), "login: ")) {
				t.Fatalf("got %d bytes, want %d ending in the prompt", len(body), tt.wantLen)
			}
		})
	}
}
