package controlplane

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"math"
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
	// withAgent gives every sample but the first the agent's shares.
	withAgent := func(xs []api.HistorySample, read, network, throttle, idle float64) []api.HistorySample {
		for i := range xs[1:] {
			xs[i+1].Agent = &api.AgentShares{Read: read, Network: network, Throttle: throttle, Idle: idle}
		}
		return xs
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
		{"old agent: source or network", srv(ferry.ReplicationBacklog, 0), series(20, 10, 3, 5<<20, 0.2), api.BottleneckSourceOrNetwork, true},
		{"source read", srv(ferry.ReplicationBacklog, 0), withAgent(series(20, 10, 3, 5<<20, 0.2), 0.7, 0.2, 0, 0.1), api.BottleneckSourceRead, false},
		{"network", srv(ferry.ReplicationBacklog, 0), withAgent(series(20, 10, 3, 5<<20, 0.2), 0.1, 0.85, 0, 0.05), api.BottleneckNetwork, false},
		{"credit waits on a half-busy staging store", srv(ferry.ReplicationBacklog, 0), withAgent(series(20, 10, 3, 5<<20, 0.6), 0.1, 0.85, 0, 0.05), api.BottleneckStagingWrite, false},
		{"staging busy beats agent figures", srv(ferry.ReplicationBacklog, 0), withAgent(series(20, 10, 3, 5<<20, 0.9), 0.9, 0.1, 0, 0), api.BottleneckStagingWrite, false},
		{"agent idle", srv(ferry.ReplicationContinuous, 0), withAgent(series(20, 10, 3, 1<<20, 0.05), 0.1, 0.1, 0, 0.8), api.BottleneckAgentIdle, false},
		{"agent held by throttle", srv(ferry.ReplicationBacklog, 4<<20), withAgent(series(20, 10, 3, 1<<20, 0.05), 0.1, 0.1, 0.8, 0), api.BottleneckThrottle, false},
		{"throttle share without a throttle", srv(ferry.ReplicationBacklog, 0), withAgent(series(20, 10, 3, 1<<20, 0.05), 0.3, 0.1, 0.6, 0), api.BottleneckSourceRead, false},
		{"read and network tie goes to network", srv(ferry.ReplicationBacklog, 0), withAgent(series(20, 10, 3, 1<<20, 0.1), 0.45, 0.45, 0, 0.1), api.BottleneckNetwork, false},
		{"steady lag with agent figures", srv(ferry.ReplicationContinuous, 0), withAgent(series(20, 2, 0, 1e6, 0.1), 0.9, 0, 0, 0.1), api.BottleneckNone, false},
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

type fakeDataPlane struct {
	received, busy int64
	agent          *AgentTiming
}

func (f *fakeDataPlane) Traffic(string) Traffic {
	return Traffic{ReceivedBytes: f.received, StagingBusy: time.Duration(f.busy), Connected: true, Agent: f.agent}
}

func TestAgentShares(t *testing.T) {
	s := time.Second
	tests := []struct {
		name      string
		prev, cur *AgentTiming
		want      *api.AgentShares
	}{
		{"old agent", nil, nil, nil},
		{"first figures", nil, &AgentTiming{Read: 1 * s, Network: 3 * s}, &api.AgentShares{Read: 0.25, Network: 0.75}},
		{"interval", &AgentTiming{Read: 10 * s, Idle: 10 * s}, &AgentTiming{Read: 11 * s, Network: 2 * s, Throttle: 1 * s, Idle: 10 * s},
			&api.AgentShares{Read: 0.25, Network: 0.5, Throttle: 0.25}},
		{"agent restarted", &AgentTiming{Read: 100 * s}, &AgentTiming{Read: 1 * s, Idle: 1 * s}, &api.AgentShares{Read: 0.5, Idle: 0.5}},
		{"no time passed", &AgentTiming{Read: 5 * s}, &AgentTiming{Read: 5 * s}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sm sample
			agentShares(&sm, tt.prev, tt.cur)
			var got *api.AgentShares
			if sm.hasAgent {
				got = &api.AgentShares{Read: float64(sm.read), Network: float64(sm.network), Throttle: float64(sm.throttle), Idle: float64(sm.idleSh)}
			}
			if (got == nil) != (tt.want == nil) || (got != nil && *got != *tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
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
	dp.agent = &AgentTiming{}
	for i := range 5 {
		dp.received += 10 << 20
		dp.busy += int64(5 * time.Second)
		dp.agent = &AgentTiming{Read: dp.agent.Read + 2*time.Second, Network: dp.agent.Network + 6*time.Second, Idle: dp.agent.Idle + 2*time.Second}
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
	if got, want := h.Samples[2].Agent, (api.AgentShares{Read: 0.2, Network: 0.6, Idle: 0.2}); got == nil ||
		math.Abs(got.Read-want.Read) > 1e-6 || math.Abs(got.Network-want.Network) > 1e-6 || math.Abs(got.Idle-want.Idle) > 1e-6 || got.Throttle != 0 {
		t.Errorf("agent shares %+v, want %+v", got, want)
	}
	// Bytes sent come from the store (kept across restarts), not from the
	// data plane's counters since the process started.
	if _, err := e.store.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error {
		s.Disks = []ferry.Disk{{Name: "vda", SentBytes: 50 << 20}, {Name: "vdb", SentBytes: 2 << 20}}
		s.Replication.ReplicatingSeconds = 1.5 * 86400
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	status, body = e.do(http.MethodGet, "/usage?format=csv", e.tokens[ferry.RoleViewer], nil)
	if status != http.StatusOK {
		t.Fatalf("usage: %d %s", status, body)
	}
	rows, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
	if err != nil || len(rows) != 2 {
		t.Fatalf("usage csv %q: %v", body, err)
	}
	if want := []string{"s-1", "host-s-1", "0", "100", "42", "3", "1.50", "54525952"}; strings.Join(rows[1], ",") != strings.Join(want, ",") {
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
