package metrics

import (
	"errors"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// gauges gathers reg and returns each metric family's first value.
func gauges(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		switch {
		case m.GetGauge() != nil:
			out[mf.GetName()] = m.GetGauge().GetValue()
		case m.GetCounter() != nil:
			out[mf.GetName()] = m.GetCounter().GetValue()
		}
	}
	return out
}

func TestDiskFree(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	RegisterDiskFree(reg, dir)
	got := gauges(t, reg)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	bs := float64(st.Bsize)
	if want := float64(st.Blocks) * bs; got["ferry_data_fs_size_bytes"] != want {
		t.Errorf("size %v, want %v", got["ferry_data_fs_size_bytes"], want)
	}
	// Others write to the same file system meanwhile: allow 256 MiB.
	if want := float64(st.Bavail) * bs; math.Abs(got["ferry_data_fs_avail_bytes"]-want) > 256<<20 {
		t.Errorf("avail %v, want about %v", got["ferry_data_fs_avail_bytes"], want)
	}
	if r, ok := got["ferry_data_fs_used_ratio"]; !ok || r < 0 || r > 1 {
		t.Errorf("used ratio %v (present %v), want 0..1", r, ok)
	}
	if got["ferry_data_fs_statfs_errors_total"] != 0 {
		t.Errorf("errors %v", got["ferry_data_fs_statfs_errors_total"])
	}

	reg = prometheus.NewRegistry()
	RegisterDiskFree(reg, filepath.Join(dir, "missing"))
	got = gauges(t, reg)
	if _, ok := got["ferry_data_fs_size_bytes"]; ok || got["ferry_data_fs_statfs_errors_total"] != 1 {
		t.Errorf("a missing directory: %v, want only the error counter at 1", got)
	}
}

func TestGCMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := NewGC(reg)
	end := time.Unix(1_800_000_000, 0)
	g.Ran(end, 2*time.Second, 10, 5<<20, nil)
	g.Ran(end.Add(time.Hour), 3*time.Second, 0, 0, errors.New("map unreadable"))
	if v := testutil.ToFloat64(g.runs.WithLabelValues("success")); v != 1 {
		t.Errorf("successes %v", v)
	}
	if v := testutil.ToFloat64(g.runs.WithLabelValues("error")); v != 1 {
		t.Errorf("errors %v", v)
	}
	got := gauges(t, reg)
	for name, want := range map[string]float64{
		"ferry_store_gc_deleted_objects_total":          10,
		"ferry_store_gc_freed_bytes_total":              5 << 20,
		"ferry_store_gc_last_duration_seconds":          3,
		"ferry_store_gc_last_success_timestamp_seconds": 1_800_000_000,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}
