package metrics

import (
	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"
)

// diskFree reports the file system of a data directory at each scrape:
// a full staging disk fails every agent's writes, so it is the first
// thing to alert on, and statfs is cheap enough to ask every time.
type diskFree struct {
	path             string
	size, free, used *prometheus.Desc
	errors           prometheus.Counter
}

// RegisterDiskFree registers the size and free space of the file system
// holding path (the server's data directory: staging journals, chunks,
// instances) as ferry_data_fs_size_bytes and ferry_data_fs_avail_bytes.
func RegisterDiskFree(reg prometheus.Registerer, path string) {
	reg.MustRegister(&diskFree{
		path: path,
		size: prometheus.NewDesc("ferry_data_fs_size_bytes", "Size of the file system holding the data directory (replica store, journals, instances).", nil, nil),
		free: prometheus.NewDesc("ferry_data_fs_avail_bytes", "Bytes of that file system available to the server; at 0 every replicated write fails until space is freed.", nil, nil),
		used: prometheus.NewDesc("ferry_data_fs_used_ratio", "Share of that file system in use, 0 to 1.", nil, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_data_fs_statfs_errors_total",
			Help: "Failed reads of the data directory's file system figures."}),
	})
}

// Describe implements prometheus.Collector.
func (d *diskFree) Describe(ch chan<- *prometheus.Desc) {
	ch <- d.size
	ch <- d.free
	ch <- d.used
	d.errors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (d *diskFree) Collect(ch chan<- prometheus.Metric) {
	var st unix.Statfs_t
	if err := unix.Statfs(d.path, &st); err != nil {
		d.errors.Inc()
	} else {
		bs := float64(st.Bsize)
		size, avail, free := float64(st.Blocks)*bs, float64(st.Bavail)*bs, float64(st.Bfree)*bs
		ch <- prometheus.MustNewConstMetric(d.size, prometheus.GaugeValue, size)
		ch <- prometheus.MustNewConstMetric(d.free, prometheus.GaugeValue, avail)
		if size > 0 {
			ch <- prometheus.MustNewConstMetric(d.used, prometheus.GaugeValue, (size-free)/size)
		}
	}
	d.errors.Collect(ch)
}
