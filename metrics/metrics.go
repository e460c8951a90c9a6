package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultTTL is how long the store figures are reused between scrapes.
const DefaultTTL = 10 * time.Second

var (
	descServers = prometheus.NewDesc("ferry_servers",
		"Live (unarchived) source servers by lifecycle and replication state.",
		[]string{"lifecycle_state", "replication_state"}, nil)
	descTotal = prometheus.NewDesc("ferry_server_disk_bytes",
		"Total size of a server's disks.", []string{"server_id", "hostname"}, nil)
	descReplicated = prometheus.NewDesc("ferry_server_replicated_bytes",
		"Bytes of a server's disks replicated so far.", []string{"server_id", "hostname"}, nil)
	descSent = prometheus.NewDesc("ferry_server_sent_bytes_total",
		"Data an agent has sent since pairing (WRITE payloads after compression), kept across restarts.", []string{"server_id", "hostname"}, nil)
	descBacklog = prometheus.NewDesc("ferry_server_backlog_bytes",
		"Bytes written on a server that are not replicated yet.", []string{"server_id", "hostname"}, nil)
	descLag = prometheus.NewDesc("ferry_server_lag_seconds",
		"How far a server's replica is behind the source.", []string{"server_id", "hostname"}, nil)
	descJobs = prometheus.NewDesc("ferry_jobs",
		"Jobs by status.", []string{"status"}, nil)
	descRefresh = prometheus.NewDesc("ferry_metrics_refresh_timestamp_seconds",
		"When the store figures were last read.", nil, nil)
	descRefreshErr = prometheus.NewDesc("ferry_metrics_refresh_errors_total",
		"Failed reads of the store for metrics.", nil, nil)
)

// StoreCollector is a prometheus.Collector over the metadata store. A
// scrape reuses the figures of the last read when they are younger than
// TTL, so Prometheus scraping 3,000 servers does not load the store on
// every request.
type StoreCollector struct {
	// Store is read; required.
	Store ferry.Store
	// TTL is how long one read is reused; 0 means DefaultTTL.
	TTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives read failures; nil means slog.Default().
	Logger *slog.Logger

	mu       sync.Mutex
	cache    []prometheus.Metric // guarded by mu
	readAt   time.Time           // guarded by mu
	failures float64             // guarded by mu
}

var _ prometheus.Collector = (*StoreCollector)(nil)

// Describe sends every metric description.
func (c *StoreCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descServers, descTotal, descReplicated, descBacklog, descLag, descJobs, descRefresh, descRefreshErr} {
		ch <- d
	}
}

// Collect sends the store figures, reading the store if the cached ones
// are older than TTL. When a read fails, the previous figures are sent and
// ferry_metrics_refresh_errors_total goes up.
func (c *StoreCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	ttl := c.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if c.cache == nil || now.Sub(c.readAt) >= ttl {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		ms, err := c.read(ctx)
		cancel()
		if err != nil {
			c.failures++
			c.logger().Warn("read store for metrics", "err", err)
		} else {
			c.cache, c.readAt = ms, now
		}
	}
	for _, m := range c.cache {
		ch <- m
	}
	if !c.readAt.IsZero() {
		ch <- prometheus.MustNewConstMetric(descRefresh, prometheus.GaugeValue, float64(c.readAt.UnixNano())/1e9)
	}
	ch <- prometheus.MustNewConstMetric(descRefreshErr, prometheus.CounterValue, c.failures)
}

func (c *StoreCollector) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *StoreCollector) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

type stateKey struct {
	l ferry.LifecycleState
	r ferry.ReplicationState
}

// read builds the metrics from one walk over servers and jobs.
func (c *StoreCollector) read(ctx context.Context) ([]prometheus.Metric, error) {
	var out []prometheus.Metric
	counts := map[stateKey]int{}
	f := ferry.ServerFilter{Limit: ferry.MaxPageSize}
	for {
		page, next, err := c.Store.ListServers(ctx, f)
		if err != nil {
			return nil, err
		}
		for _, s := range page {
			counts[stateKey{s.Lifecycle, s.Replication.State}]++
			var replicated, backlog int64
			for _, d := range s.Disks {
				replicated += d.ReplicatedBytes
				backlog += d.BackloggedBytes
			}
			out = append(out,
				prometheus.MustNewConstMetric(descTotal, prometheus.GaugeValue, float64(s.TotalBytes()), s.ID, s.Hostname),
				prometheus.MustNewConstMetric(descReplicated, prometheus.GaugeValue, float64(replicated), s.ID, s.Hostname),
				prometheus.MustNewConstMetric(descBacklog, prometheus.GaugeValue, float64(backlog), s.ID, s.Hostname),
				prometheus.MustNewConstMetric(descSent, prometheus.CounterValue, float64(s.SentBytes()), s.ID, s.Hostname),
				prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, s.Replication.LagSeconds, s.ID, s.Hostname),
			)
		}
		if next == "" {
			break
		}
		f.After = next
	}
	// Every lifecycle × replication pair is sent, zeros included, so a
	// state that empties drops to 0 instead of vanishing.
	for _, l := range ferry.LifecycleStates {
		for _, r := range ferry.ReplicationStates {
			out = append(out, prometheus.MustNewConstMetric(descServers, prometheus.GaugeValue, float64(counts[stateKey{l, r}]), string(l), string(r)))
		}
	}
	for _, st := range []ferry.JobStatus{ferry.JobPending, ferry.JobStarted, ferry.JobCompleted} {
		n, err := countJobs(ctx, c.Store, st)
		if err != nil {
			return nil, err
		}
		out = append(out, prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(n), string(st)))
	}
	return out, nil
}

func countJobs(ctx context.Context, st ferry.Store, status ferry.JobStatus) (int, error) {
	f := ferry.JobFilter{Status: status, Limit: ferry.MaxPageSize}
	n := 0
	for {
		page, next, err := st.ListJobs(ctx, f)
		if err != nil {
			return 0, err
		}
		n += len(page)
		if next == "" {
			return n, nil
		}
		f.After = next
	}
}

// API counts and times API calls. Its Observe method fits
// controlplane.Server.Observe.
type API struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewAPI makes the API request metrics and registers them with reg.
func NewAPI(reg prometheus.Registerer) *API {
	a := &API{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_api_requests_total",
			Help: "API requests by method, route pattern and HTTP status.",
		}, []string{"method", "route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ferry_api_request_duration_seconds",
			Help:    "API request latency by method and route pattern.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "route"}),
	}
	reg.MustRegister(a.requests, a.duration)
	return a
}

// Observe records one API call. route is the route's pattern (e.g.
// /servers/{id}), never the raw path, so ids do not explode the series.
func (a *API) Observe(method, route string, status int, elapsed time.Duration) {
	a.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
	a.duration.WithLabelValues(method, route).Observe(elapsed.Seconds())
}

// NewRegistry returns a registry with the Go runtime and process
// collectors, the store collector and the API metrics.
func NewRegistry(st ferry.Store, log *slog.Logger) (*prometheus.Registry, *API) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&StoreCollector{Store: st, Logger: log},
	)
	return reg, NewAPI(reg)
}

// Handler serves reg in the Prometheus text format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
