package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// GC holds the metrics of the server's online garbage collections of its
// replica store, so that an operator can alert on a GC that keeps failing
// or on space that never comes back.
type GC struct {
	runs        *prometheus.CounterVec
	deleted     prometheus.Counter
	freed       prometheus.Counter
	duration    prometheus.Gauge
	lastSuccess prometheus.Gauge
}

// NewGC makes the GC metrics and registers them with reg.
func NewGC(reg prometheus.Registerer) *GC {
	g := &GC{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_store_gc_runs_total",
			Help: "Garbage collections of the replica store by the running server, by outcome (success, error).",
		}, []string{"outcome"}),
		deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_store_gc_deleted_objects_total",
			Help: "Chunk objects the server's garbage collections deleted.",
		}),
		freed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_store_gc_freed_bytes_total",
			Help: "Bytes of chunk objects the server's garbage collections deleted.",
		}),
		duration: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_store_gc_last_duration_seconds",
			Help: "How long the last garbage collection ran, successful or not.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_store_gc_last_success_timestamp_seconds",
			Help: "When the last successful garbage collection ended (Unix time; 0: none since start).",
		}),
	}
	reg.MustRegister(g.runs, g.deleted, g.freed, g.duration, g.lastSuccess)
	g.runs.WithLabelValues("success")
	g.runs.WithLabelValues("error")
	return g
}

// Ran records one garbage collection that ended at end after d.
func (g *GC) Ran(end time.Time, d time.Duration, deleted int, freed int64, err error) {
	g.duration.Set(d.Seconds())
	if err != nil {
		g.runs.WithLabelValues("error").Inc()
		return
	}
	g.runs.WithLabelValues("success").Inc()
	g.deleted.Add(float64(deleted))
	g.freed.Add(float64(freed))
	g.lastSuccess.Set(float64(end.UnixNano()) / 1e9)
}
