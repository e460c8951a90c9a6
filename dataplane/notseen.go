package dataplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry"
)

// defaultAgentNotSeenAfter is how long a disconnected agent may stay
// silent before its server gets the AGENT_NOT_SEEN error.
const defaultAgentNotSeenAfter = 10 * time.Minute

func (s *Server) agentNotSeenAfter() time.Duration {
	if s.AgentNotSeenAfter > 0 {
		return s.AgentNotSeenAfter
	}
	return defaultAgentNotSeenAfter
}

// MarkAgentsNotSeen gives every server whose agent is disconnected and
// has not been heard from for AgentNotSeenAfter the AGENT_NOT_SEEN error
// (MGN's name for it), so that a source that went away shows up in lists
// and alerts without anyone comparing last-seen times. The agent's next
// session clears it. It replaces UNSTABLE_NETWORK but no other error.
// Servers disconnected from the service, archived or with replication
// stopped are left alone. It returns how many it marked.
func (s *Server) MarkAgentsNotSeen(ctx context.Context) (int, error) {
	after := s.agentNotSeenAfter()
	now := s.now()
	f := ferry.ServerFilter{Replication: []ferry.ReplicationState{ferry.ReplicationDisconnected}, Limit: ferry.MaxPageSize}
	n := 0
	for {
		list, next, err := s.Store.ListServers(ctx, f)
		if err != nil {
			return n, fmt.Errorf("list disconnected servers: %w", err)
		}
		for _, srv := range list {
			if !notSeen(srv, now, after) {
				continue
			}
			s.mu.Lock()
			_, live := s.sessions[srv.ID]
			s.mu.Unlock()
			if live {
				continue
			}
			_, err := s.Store.UpdateServer(ctx, srv.ID, func(cur *ferry.SourceServer) error {
				if !notSeen(cur, now, after) {
					return errUnchanged
				}
				cur.Replication.ErrorCode = ferry.ErrCodeAgentNotSeen
				cur.Replication.ErrorMessage = fmt.Sprintf("no contact from the agent since %s (%s ago)", cur.LastSeenAt.UTC().Format(time.RFC3339), now.Sub(cur.LastSeenAt).Round(time.Minute))
				cur.UpdatedAt = now
				return nil
			})
			switch {
			case errors.Is(err, errUnchanged), errors.Is(err, ferry.ErrNotFound):
			case err != nil:
				return n, fmt.Errorf("mark server %s AGENT_NOT_SEEN: %w", srv.ID, err)
			default:
				n++
				s.log().Warn("agent not seen", "server", srv.ID, "last_seen", srv.LastSeenAt)
			}
		}
		if next == "" {
			return n, nil
		}
		f.After = next
	}
}

// errUnchanged aborts an update that has nothing to do.
var errUnchanged = errors.New("unchanged")

// notSeen reports whether srv should get AGENT_NOT_SEEN at now.
func notSeen(srv *ferry.SourceServer, now time.Time, after time.Duration) bool {
	if srv.Archived || srv.Desired == ferry.DesiredStop || srv.Replication.State != ferry.ReplicationDisconnected {
		return false
	}
	switch srv.Lifecycle {
	case ferry.LifecycleDisconnected, ferry.LifecycleCutover, ferry.LifecycleDiscovered:
		return false
	}
	switch srv.Replication.ErrorCode {
	case "":
	case ferry.ErrCodeUnstableNetwork:
		// An agent gone for good is more to the point than its
		// connection having dropped before it went.
	default:
		return false // already marked, or a more specific error stands
	}
	return !srv.LastSeenAt.IsZero() && now.Sub(srv.LastSeenAt) >= after
}

// RunAgentWatch runs MarkAgentsNotSeen every interval (a minute when 0)
// until ctx ends.
func (s *Server) RunAgentWatch(ctx context.Context, interval time.Duration) {
	s.every(ctx, interval, "agent watch", func(ctx context.Context) error {
		_, err := s.MarkAgentsNotSeen(ctx)
		return err
	})
}
