package metrics

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/sqlite"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func addServer(t *testing.T, st ferry.Store, id string, l ferry.LifecycleState, r ferry.ReplicationState) {
	t.Helper()
	s := &ferry.SourceServer{
		ID: id, MachineID: "m-" + id, Hostname: "host-" + id, Lifecycle: l,
		Replication: ferry.ReplicationInfo{State: r, LagSeconds: 12.5},
		Disks:       []ferry.Disk{{Name: "vda", SizeBytes: 1 << 30, ReplicatedBytes: 1 << 29, BackloggedBytes: 4096, SentBytes: 3 << 20}, {Name: "vdb", SentBytes: 1 << 20}},
	}
	if err := st.CreateServer(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// The collector reports servers by state and per-server bytes, and reads
// the store at most once per TTL.
func TestStoreCollector(t *testing.T) {
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	addServer(t, st, "s-1", ferry.LifecycleNotReady, ferry.ReplicationInitialSync)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &StoreCollector{Store: st, TTL: 10 * time.Second, Now: func() time.Time { return now }}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)

	want := `
# HELP ferry_server_backlog_bytes Bytes written on a server that are not replicated yet.
# TYPE ferry_server_backlog_bytes gauge
ferry_server_backlog_bytes{hostname="host-s-1",server_id="s-1"} 4096
# HELP ferry_server_replicated_bytes Bytes of a server's disks replicated so far.
# TYPE ferry_server_replicated_bytes gauge
ferry_server_replicated_bytes{hostname="host-s-1",server_id="s-1"} 5.36870912e+08
# HELP ferry_server_lag_seconds How far a server's replica is behind the source.
# TYPE ferry_server_lag_seconds gauge
ferry_server_lag_seconds{hostname="host-s-1",server_id="s-1"} 12.5
# HELP ferry_server_sent_bytes_total Data an agent has sent since pairing (WRITE payloads after compression), kept across restarts.
# TYPE ferry_server_sent_bytes_total counter
ferry_server_sent_bytes_total{hostname="host-s-1",server_id="s-1"} 4.194304e+06
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ferry_server_backlog_bytes", "ferry_server_replicated_bytes", "ferry_server_lag_seconds", "ferry_server_sent_bytes_total"); err != nil {
		t.Fatal(err)
	}
	count := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "ferry_servers" {
				continue
			}
			n := 0.0
			for _, m := range mf.GetMetric() {
				n += m.GetGauge().GetValue()
			}
			return n
		}
		t.Fatal("no ferry_servers")
		return 0
	}
	if got := count(); got != 1 {
		t.Fatalf("servers %v, want 1", got)
	}
	addServer(t, st, "s-2", ferry.LifecycleReadyForTest, ferry.ReplicationContinuous)
	now = now.Add(5 * time.Second)
	if got := count(); got != 1 {
		t.Fatalf("within the TTL: servers %v, want the cached 1", got)
	}
	now = now.Add(6 * time.Second)
	if got := count(); got != 2 {
		t.Fatalf("after the TTL: servers %v, want 2", got)
	}
}

func TestAPIObserve(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := NewAPI(reg)
	a.Observe("GET", "/servers/{id}", 200, 3*time.Millisecond)
	a.Observe("GET", "/servers/{id}", 200, 5*time.Millisecond)
	a.Observe("GET", "/servers/{id}", 404, time.Millisecond)
	if got := testutil.ToFloat64(a.requests.WithLabelValues("GET", "/servers/{id}", "200")); got != 2 {
		t.Fatalf("requests 200 = %v, want 2", got)
	}
	if n := testutil.CollectAndCount(a.duration); n != 1 {
		t.Fatalf("%d duration series, want 1", n)
	}
}

func TestHubMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	j := NewJobs(reg)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	j.Ended(&ferry.Job{Type: ferry.JobLaunch, InitiatedBy: ferry.InitiatedByStartTest, CreatedAt: t0, EndedAt: t0.Add(42 * time.Second),
		Servers: []ferry.JobServer{{LaunchStatus: ferry.LaunchLaunched}, {LaunchStatus: ferry.LaunchFailed}}})
	reg.MustRegister(&DataPlaneCollector{Sessions: func() int { return 3 },
		StoreUsage: func(context.Context) (int64, int64, error) { return 1000, 400, nil },
		BulkCredit: func() (int64, int64) { return 96 << 20, 1 << 30 }})
	var b strings.Builder
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		b.WriteString(mf.String())
	}
	for _, want := range []string{"ferry_agent_connections", "value:3", "ferry_store_logical_bytes", "value:1000", "ferry_store_stored_bytes", "value:400",
		"ferry_bulk_credit_used_bytes", "value:1.00663296e+08", "ferry_bulk_credit_pool_bytes", "value:1.073741824e+09",
		"ferry_job_duration_seconds", "sample_sum:42", "ferry_job_servers_total", `value:"LAUNCHED"`, `value:"FAILED"`} {
		if !strings.Contains(strings.ReplaceAll(b.String(), " ", ""), strings.ReplaceAll(want, " ", "")) {
			t.Errorf("metrics lack %s:\n%s", want, b.String())
		}
	}
}

// TestRegisterWriter: the writer's figures are read at each scrape.
func TestRegisterWriter(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := WriterStats{Commits: 3, Writes: 700, Commit: 1500 * time.Millisecond, Busy: 4 * time.Second, Queued: 12}
	RegisterWriter(reg, func() WriterStats { return st })
	want := `
# HELP ferry_metadata_commit_seconds_total Time the metadata store's writer spent committing (its fsync).
# TYPE ferry_metadata_commit_seconds_total counter
ferry_metadata_commit_seconds_total 1.5
# HELP ferry_metadata_write_queue Writes waiting for the metadata store's writer.
# TYPE ferry_metadata_write_queue gauge
ferry_metadata_write_queue 12
# HELP ferry_metadata_writes_total Writes the metadata store's writer ran.
# TYPE ferry_metadata_writes_total counter
ferry_metadata_writes_total 700
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ferry_metadata_commit_seconds_total", "ferry_metadata_write_queue", "ferry_metadata_writes_total"); err != nil {
		t.Fatal(err)
	}
	st.Queued = 0
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.Replace(want, "queue 12", "queue 0", 1)), "ferry_metadata_write_queue"); err != nil {
		t.Fatalf("second scrape: %v", err)
	}
}
