package dataplane

import (
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry"
)

// UNSTABLE_NETWORK defaults.
const (
	// defaultUnstableDrops unplanned session ends within
	// defaultUnstableWindow make a server's network unstable.
	defaultUnstableDrops  = 3
	defaultUnstableWindow = 10 * time.Minute
	// The drop times kept per server: a few more than the threshold, so
	// the error text can say how many drops the window held, and never
	// more than maxDropRing, since one replication server holds 10,000
	// sessions and a site-wide outage drops them all.
	minDropRing = 8
	maxDropRing = 64
)

func (s *Server) unstableDrops() int {
	if s.UnstableDrops > 0 {
		return min(s.UnstableDrops, maxDropRing)
	}
	return defaultUnstableDrops
}

func (s *Server) unstableWindow() time.Duration {
	if s.UnstableWindow > 0 {
		return s.UnstableWindow
	}
	return defaultUnstableWindow
}

// dropLog is one server's recent unplanned session ends.
type dropLog struct {
	at   []time.Time // a ring of drop times; its capacity is fixed when made
	next int         // where the next drop goes once the ring is full
	// text is the UNSTABLE_NETWORK error text as of the last drop, or ""
	// when the drops then did not reach the threshold.
	text string
}

// add records a drop at t.
func (l *dropLog) add(t time.Time) {
	if len(l.at) < cap(l.at) {
		l.at = append(l.at, t)
		return
	}
	l.at[l.next] = t
	l.next = (l.next + 1) % len(l.at)
}

// full says whether the ring holds as many drops as it can.
func (l *dropLog) full() bool { return len(l.at) == cap(l.at) }

// dropsWithin returns how many of drops (in any order) fall within the
// window ending at now, that is after now-window and not after now, and
// the earliest of them.
func dropsWithin(drops []time.Time, now time.Time, window time.Duration) (n int, first time.Time) {
	for _, t := range drops {
		if t.After(now) || now.Sub(t) >= window {
			continue
		}
		if n == 0 || t.Before(first) {
			first = t
		}
		n++
	}
	return n, first
}

// unstableText is the UNSTABLE_NETWORK error text: n drops within span
// (atLeast when the ring could not hold them all), the rule, and the
// error of the last drop.
func unstableText(n int, atLeast bool, span time.Duration, threshold int, window time.Duration, lastErr string) string {
	count := fmt.Sprintf("%d times", n)
	if n == 1 {
		count = "once"
	}
	if atLeast {
		count = "at least " + count
	}
	if span < time.Second {
		span = span.Round(time.Millisecond)
	} else {
		span = span.Round(time.Second)
	}
	return fmt.Sprintf("the agent's data-plane connection dropped %s within %s (%d or more within %s count as unstable); last error: %s",
		count, span, threshold, window, lastErr)
}

// recordDrop logs an unplanned end of server id's session at now with
// cause, and returns the UNSTABLE_NETWORK error text when the drops within
// the window ending now reach the threshold, else "".
func (s *Server) recordDrop(id string, now time.Time, cause string) string {
	threshold, window := s.unstableDrops(), s.unstableWindow()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drops == nil {
		s.drops = map[string]*dropLog{}
	}
	l := s.drops[id]
	if l == nil {
		l = &dropLog{at: make([]time.Time, 0, max(threshold, minDropRing))}
		s.drops[id] = l
	}
	l.add(now)
	l.text = ""
	if n, first := dropsWithin(l.at, now, window); n >= threshold {
		l.text = unstableText(n, n == len(l.at) && l.full(), now.Sub(first), threshold, window, cause)
	}
	return l.text
}

// dropState returns what server id's new session starts from: the
// UNSTABLE_NETWORK text as of the server's last drop ("" when its drops
// did not reach the threshold), and whether this replication server keeps
// a drop log for it at all.
func (s *Server) dropState(id string) (text string, logged bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.drops[id]
	if l == nil {
		return "", false
	}
	return l.text, true
}

// forgetDrops discards server id's drop log: a session stayed up for the
// window, so none of the drops before it can count with the next one.
func (s *Server) forgetDrops(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.drops, id)
}

// markUnstable gives srv the UNSTABLE_NETWORK error with text as its
// session ends with the drop that reached the threshold (or a later one,
// whose text replaces the older). It never replaces another error, and
// leaves alone a server whose replication is not meant to run. It reports
// whether the error was newly set.
func markUnstable(srv *ferry.SourceServer, text string) bool {
	if text == "" || srv.Archived || srv.Lifecycle == ferry.LifecycleDisconnected || srv.Desired != ferry.DesiredRun {
		return false
	}
	switch srv.Replication.ErrorCode {
	case "":
		srv.Replication.ErrorCode, srv.Replication.ErrorMessage = ferry.ErrCodeUnstableNetwork, text
		return true
	case ferry.ErrCodeUnstableNetwork:
		srv.Replication.ErrorMessage = text
	}
	return false
}

// sessionError returns the replication error a live session records, in
// order: SNAPSHOTS_FAILURE after a failed snapshot; NOT_CONVERGING while
// stalled; UNSTABLE_NETWORK while the session has been up for less than
// window and the server's network was found unstable (the record has the
// error already, or unstable, this replication server's text for it, is
// set); else none. cur is the record's replication info; upFor is how
// long the session has been up. An UNSTABLE_NETWORK in cur is kept with
// its text, so a session that keeps it does not write the record for it.
func sessionError(cur ferry.ReplicationInfo, state ferry.ReplicationState, snapErr error, unstable string, upFor, window time.Duration) (ferry.ReplicationErrorCode, string) {
	switch {
	case snapErr != nil:
		return ferry.ErrCodeSnapshotsFailure, snapErr.Error()
	case state == ferry.ReplicationStalled:
		return ferry.ErrCodeNotConverging, "no progress from the agent"
	case upFor >= window:
		return "", ""
	case cur.ErrorCode == ferry.ErrCodeUnstableNetwork:
		return cur.ErrorCode, cur.ErrorMessage
	case unstable != "":
		return ferry.ErrCodeUnstableNetwork, unstable
	}
	return "", ""
}

// dropCounts says whether a session's end counts toward UNSTABLE_NETWORK:
// the connection failed or the agent closed it (drop), and none of the
// planned ends applies: the replication server shutting down, or the
// operator's pause or stop in force (a source may well be restarted then).
// The other planned ends (a disconnect from the service, a newer session
// of the same agent, a replica deletion, the server refusing what the
// agent sent or failing to store it) are recorded as not a drop where they
// happen.
func dropCounts(drop, shuttingDown bool, desired uint8) bool {
	return drop && !shuttingDown && desired == desiredCode(ferry.DesiredRun)
}
