package controlplane

import (
	"sync"
	"time"
)

// failLimiter blocks a client address after too many failed sign-ins in a
// window, so tokens cannot be guessed at speed. It keeps a bounded map.
type failLimiter struct {
	max    int
	window time.Duration

	mu    sync.Mutex
	fails map[string][]time.Time // guarded by mu
}

func newFailLimiter(max int, window time.Duration) *failLimiter {
	return &failLimiter{max: max, window: window, fails: map[string][]time.Time{}}
}

func (l *failLimiter) fail(ip string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.fails) > 10000 {
		l.pruneLocked(now)
	}
	l.fails[ip] = append(l.recentLocked(ip, now), now)
}

func (l *failLimiter) blocked(ip string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.recentLocked(ip, now)) >= l.max
}

func (l *failLimiter) recentLocked(ip string, now time.Time) []time.Time {
	ts := l.fails[ip]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) > l.window {
		i++
	}
	ts = ts[i:]
	if len(ts) == 0 {
		delete(l.fails, ip)
		return nil
	}
	l.fails[ip] = ts
	return ts
}

func (l *failLimiter) pruneLocked(now time.Time) {
	for ip := range l.fails {
		l.recentLocked(ip, now)
	}
}
