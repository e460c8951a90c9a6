package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/ferrymigrate/ferry/replica"
)

// gcFirstDelay bounds the wait for the first garbage collection after a
// start, so that a server restarted more often than its interval still
// collects.
const gcFirstDelay = 10 * time.Minute

// runGC garbage-collects st every interval until ctx ends, the first time
// after min(interval, gcFirstDelay). The store's GC is safe while agents
// write and instances read (replica.Store.GC; TestGCWhileLive); folds wait
// for it, so it never runs twice at once. A failed run is logged and
// tried again at the next tick: GC deletes nothing when it cannot read a
// block map. observe, if not nil, gets every run.
func runGC(ctx context.Context, st *replica.Store, interval time.Duration, log *slog.Logger, observe func(end time.Time, d time.Duration, s replica.GCStats, err error)) {
	if interval <= 0 {
		return
	}
	t := time.NewTimer(min(interval, gcFirstDelay))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t0 := time.Now()
		stats, err := st.GC(ctx)
		end := time.Now()
		if ctx.Err() != nil {
			// Stopped by shutdown, not failed: nothing to report.
			return
		}
		if err != nil {
			log.Warn("replica store gc failed; retrying at the next interval", "err", err, "took", end.Sub(t0).Round(time.Millisecond), "next", interval)
		} else {
			log.Info("replica store gc", "maps", stats.Maps, "chunks", stats.Chunks, "deleted", stats.Deleted, "freed_bytes", stats.FreedBytes, "took", end.Sub(t0).Round(time.Millisecond))
		}
		if observe != nil {
			observe(end, end.Sub(t0), stats, err)
		}
		t.Reset(interval)
	}
}
