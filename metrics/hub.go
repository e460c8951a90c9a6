package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/prometheus/client_golang/prometheus"
)

// Jobs records launch and terminate jobs as they end. Its Ended method
// fits jobs.Runner.OnEnd.
type Jobs struct {
	duration *prometheus.HistogramVec
	servers  *prometheus.CounterVec
}

// NewJobs makes the job metrics and registers them with reg.
func NewJobs(reg prometheus.Registerer) *Jobs {
	j := &Jobs{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ferry_job_duration_seconds",
			Help:    "How long jobs ran, from creation to end, by type and initiator.",
			Buckets: []float64{1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600},
		}, []string{"type", "initiated_by"}),
		servers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_job_servers_total",
			Help: "Servers' outcomes in ended jobs (launch status: LAUNCHED, FAILED, TERMINATED), by job type and initiator.",
		}, []string{"type", "initiated_by", "outcome"}),
	}
	reg.MustRegister(j.duration, j.servers)
	return j
}

// Ended records a job that has ended.
func (j *Jobs) Ended(job *ferry.Job) {
	if job == nil {
		return
	}
	if !job.EndedAt.IsZero() && !job.CreatedAt.IsZero() {
		j.duration.WithLabelValues(string(job.Type), string(job.InitiatedBy)).Observe(job.EndedAt.Sub(job.CreatedAt).Seconds())
	}
	for _, s := range job.Servers {
		j.servers.WithLabelValues(string(job.Type), string(job.InitiatedBy), string(s.LaunchStatus)).Inc()
	}
}

var (
	descAgents = prometheus.NewDesc("ferry_agent_connections",
		"Agents connected to this replication server now (data-plane sessions).", nil, nil)
	descStoreLogical = prometheus.NewDesc("ferry_store_logical_bytes",
		"Non-zero data the replicas' newest block maps hold, before deduplication and compression.", nil, nil)
	descStoreStored = prometheus.NewDesc("ferry_store_stored_bytes",
		"Bytes of chunk objects the replica store keeps, after deduplication and compression.", nil, nil)
	descBulkUsed = prometheus.NewDesc("ferry_bulk_credit_used_bytes",
		"Write credit that agents copying whole disks (initial sync, rescan) hold beyond the base credit, from the bulk pool.", nil, nil)
	descBulkPool = prometheus.NewDesc("ferry_bulk_credit_pool_bytes",
		"Size of the bulk credit pool (bulk_credit_pool_mib); 0 when it is off.", nil, nil)
)

// DataPlaneCollector reports agent connections and the replica store's
// size. Reading the store's size walks every block map, so it is reused
// for StoreTTL.
type DataPlaneCollector struct {
	// Sessions returns the connected agents; required.
	Sessions func() int
	// StoreUsage returns the store's logical and stored bytes; nil sends
	// no store figures.
	StoreUsage func(ctx context.Context) (logical, stored int64, err error)
	// StoreTTL is how long one store read is reused; 0 means 5 minutes.
	StoreTTL time.Duration
	// BulkCredit returns the bulk write credit in use and the pool's
	// size; nil sends no bulk credit figures.
	BulkCredit func() (used, pool int64)

	mu              sync.Mutex
	readAt          time.Time // guarded by mu
	logical, stored int64     // guarded by mu
}

var _ prometheus.Collector = (*DataPlaneCollector)(nil)

// Describe sends every metric description.
func (c *DataPlaneCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descAgents
	ch <- descStoreLogical
	ch <- descStoreStored
	ch <- descBulkUsed
	ch <- descBulkPool
}

// Collect sends the figures.
func (c *DataPlaneCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, float64(c.Sessions()))
	if c.BulkCredit != nil {
		used, pool := c.BulkCredit()
		ch <- prometheus.MustNewConstMetric(descBulkUsed, prometheus.GaugeValue, float64(used))
		ch <- prometheus.MustNewConstMetric(descBulkPool, prometheus.GaugeValue, float64(pool))
	}
	if c.StoreUsage == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ttl := c.StoreTTL
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	if c.readAt.IsZero() || time.Since(c.readAt) >= ttl {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		l, s, err := c.StoreUsage(ctx)
		cancel()
		if err == nil {
			c.logical, c.stored, c.readAt = l, s, time.Now()
		}
	}
	if !c.readAt.IsZero() {
		ch <- prometheus.MustNewConstMetric(descStoreLogical, prometheus.GaugeValue, float64(c.logical))
		ch <- prometheus.MustNewConstMetric(descStoreStored, prometheus.GaugeValue, float64(c.stored))
	}
}

// WriterStats are a metadata store's write figures since it opened (the
// SQLite store's single writer has them).
type WriterStats struct {
	Commits, Writes int64
	Commit, Busy    time.Duration
	Queued          int
}

// RegisterWriter adds the metadata store writer's figures to reg: with
// thousands of agents, the writer's queue and commit time say first
// whether the store keeps up.
func RegisterWriter(reg prometheus.Registerer, stats func() WriterStats) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_metadata_commits_total",
			Help: "Transactions the metadata store's writer committed; many writes share one."},
			func() float64 { return float64(stats().Commits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_metadata_writes_total",
			Help: "Writes the metadata store's writer ran."},
			func() float64 { return float64(stats().Writes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_metadata_commit_seconds_total",
			Help: "Time the metadata store's writer spent committing (its fsync)."},
			func() float64 { return stats().Commit.Seconds() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_metadata_busy_seconds_total",
			Help: "Time the metadata store's writer spent in transactions, commits included."},
			func() float64 { return stats().Busy.Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_metadata_write_queue",
			Help: "Writes waiting for the metadata store's writer."},
			func() float64 { return float64(stats().Queued) }),
	)
}
