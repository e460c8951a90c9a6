// Package dedup measures what the replica store keeps for many servers
// cloned from one image: every clone is written through the real store
// API (zero extents as zero records, data in 1 MiB writes, as the
// replication server applies an agent's initial sync), then diverged,
// folded, and the store's stored bytes compared with one image's.
package dedup
