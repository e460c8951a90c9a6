package dataplane

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/replica"
)

// DeleteReplica deletes every replica disk of a source server, with its
// snapshots and journal, and returns how many it deleted; their chunks
// that no other disk shares are freed by the next GC. A live session of
// the server is ended first and none can start until it is done. A disk
// that a launched instance still reads is refused with an error wrapping
// ferry.ErrConflict, and the disks deleted before it stay deleted. Once
// all are gone, the server's traffic counters and drop log go too.
func (s *Server) DeleteReplica(ctx context.Context, serverID string) (int, error) {
	if s.Replica == nil {
		return 0, nil
	}
	release, err := s.claim(ctx, serverID, false, func(bool) {})
	if err != nil {
		return 0, fmt.Errorf("delete replica of %s: %w", serverID, err)
	}
	defer release()
	prefix := DiskID(serverID, "")
	n := 0
	for _, d := range s.Replica.Disks() {
		if !strings.HasPrefix(d.ID(), prefix) {
			continue
		}
		err := s.Replica.DeleteDisk(ctx, d.ID())
		switch {
		case errors.Is(err, replica.ErrBusy):
			return n, fmt.Errorf("%w: replica disk %s is in use (an instance reads it): %v", ferry.ErrConflict, d.ID(), err)
		case errors.Is(err, replica.ErrNotFound):
			// Deleted meanwhile.
		case err != nil:
			return n, fmt.Errorf("delete replica of %s: %w", serverID, err)
		default:
			n++
			s.log().Info("replica disk deleted", "server", serverID, "disk", d.ID())
		}
	}
	s.forget(serverID)
	return n, nil
}

// forget drops what the server keeps in memory of a server whose replica
// is gone (its traffic counters and drop log): a fleet that comes and
// goes would otherwise grow them for the life of the process.
func (s *Server) forget(serverID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.traffic, serverID)
	delete(s.drops, serverID)
}
