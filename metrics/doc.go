// Package metrics exposes Ferry's state in Prometheus format (client_golang):
// servers by lifecycle and replication state, per-server replicated and
// backlogged bytes and lag, jobs by status, read from the metadata store at
// most every few seconds however often Prometheus scrapes; and API request
// counts and latencies by route and status.
package metrics
