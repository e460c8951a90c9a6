package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// Server-sent events limits and pacing.
const (
	// DefaultEventPollInterval is how often an event stream reads the
	// store for changed servers.
	DefaultEventPollInterval = 2 * time.Second
	// DefaultEventStreamMaxAge is how long one event stream lasts before
	// the client must reconnect (and authenticate again).
	DefaultEventStreamMaxAge = 10 * time.Minute
	// eventHeartbeat is how often an idle stream sends a comment, so
	// proxies and clients see it is alive.
	eventHeartbeat = 15 * time.Second
	// maxEventStreams bounds concurrent streams; each polls the store.
	maxEventStreams = 64
)

// events streams server changes as server-sent events (GET /events). The
// first event, "snapshot", holds every live server; after it, each poll
// that finds changes sends one "servers" event with the changed servers
// and the ids of those gone (deleted or archived). Comments are sent as
// heartbeats. The stream ends when the client goes, when its token expires
// or is revoked (checked every poll), after EventStreamMaxAge, or when the
// server shuts down (CloseStreams).
func (s *Server) events(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := checkParams(r.URL.Query()); err != nil {
		return err
	}
	if n := s.streams.Add(1); n > maxEventStreams {
		s.streams.Add(-1)
		return apiErr(http.StatusServiceUnavailable, "unavailable", "too many event streams open (%d); try again later", maxEventStreams)
	}
	defer s.streams.Add(-1)
	ctx := r.Context()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprint(w, "retry: 3000\n\n"); err != nil {
		return nil
	}
	interval := s.EventPollInterval
	if interval <= 0 {
		interval = DefaultEventPollInterval
	}
	maxAge := s.EventStreamMaxAge
	if maxAge <= 0 {
		maxAge = DefaultEventStreamMaxAge
	}
	end := time.NewTimer(maxAge)
	defer end.Stop()
	seen := map[string]uint64{}
	seq := 0
	send := func(event string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode %s event: %w", event, err)
		}
		seq++
		if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", seq, event, b); err != nil {
			return err
		}
		return rc.Flush()
	}
	first := true
	poll := time.NewTicker(interval)
	defer poll.Stop()
	lastSent := time.Now()
	for {
		servers, err := allServers(ctx, s.Store, ferry.ServerFilter{})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log().Warn("event stream: list servers", "err", err)
		} else {
			diff := diffServers(seen, servers)
			switch {
			case first:
				err = send("snapshot", api.List[*ferry.SourceServer]{Items: nonNil(servers)})
				first = false
				lastSent = time.Now()
			case len(diff.Changed) > 0 || len(diff.Removed) > 0:
				err = send("servers", diff)
				lastSent = time.Now()
			}
			if err != nil {
				return nil // the client went away; nothing to answer
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.streamsDone():
			return nil
		case <-end.C:
			return nil
		case <-poll.C:
		}
		if !s.stillActive(ctx, c) {
			// The client reconnects and gets the 401 that says why
			// (session expired, or revoked): a page left open notices
			// within a poll.
			return nil
		}
		if time.Since(lastSent) >= eventHeartbeat {
			if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil {
				return nil
			}
			if rc.Flush() != nil {
				return nil
			}
			lastSent = time.Now()
		}
	}
}

// stillActive reports whether the token a stream was opened with may still
// be used. A store error keeps the stream (the next poll asks again).
func (s *Server) stillActive(ctx context.Context, c *caller) bool {
	if c == nil || c.token == nil {
		return true
	}
	tok, err := s.Store.Token(ctx, c.token.ID)
	if err != nil {
		return !isNotFound(err)
	}
	return tok.Active(s.now())
}

func nonNil(s []*ferry.SourceServer) []*ferry.SourceServer {
	if s == nil {
		return []*ferry.SourceServer{}
	}
	return s
}

// diffServers compares servers with the fingerprints in seen, updates
// seen, and returns what changed.
func diffServers(seen map[string]uint64, servers []*ferry.SourceServer) api.ServerChanges {
	d := api.ServerChanges{Changed: []*ferry.SourceServer{}, Removed: []string{}}
	now := make(map[string]bool, len(servers))
	for _, srv := range servers {
		now[srv.ID] = true
		b, err := json.Marshal(srv)
		if err != nil {
			continue
		}
		h := fnv.New64a()
		_, _ = h.Write(b)
		fp := h.Sum64()
		if old, ok := seen[srv.ID]; !ok || old != fp {
			seen[srv.ID] = fp
			d.Changed = append(d.Changed, srv)
		}
	}
	for id := range seen {
		if !now[id] {
			delete(seen, id)
			d.Removed = append(d.Removed, id)
		}
	}
	return d
}

// streamsDone is closed by CloseStreams.
func (s *Server) streamsDone() <-chan struct{} {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closing == nil {
		s.closing = make(chan struct{})
	}
	return s.closing
}

// CloseStreams ends every open event stream, so a graceful HTTP shutdown
// does not wait for them; register it with http.Server.RegisterOnShutdown.
func (s *Server) CloseStreams() {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closing == nil {
		s.closing = make(chan struct{})
	}
	select {
	case <-s.closing:
	default:
		close(s.closing)
	}
}
