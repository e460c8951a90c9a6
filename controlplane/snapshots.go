package controlplane

import (
	"context"
	"net/http"
	"time"

	"github.com/ferrymigrate/ferry/api"
)

// Snapshots takes and lists point-in-time snapshots of servers' disks; the
// replication server (package dataplane) implements it.
type Snapshots interface {
	Snapshot(ctx context.Context, serverID string, drain bool) (map[string]string, error)
	List(ctx context.Context, serverID string) ([]api.Snapshot, error)
}

// AppSnapshots is implemented by a Snapshots that can take app-consistent
// snapshots: the agent freezes the file systems on the disks, drains, and
// marks the point app-consistent.
type AppSnapshots interface {
	SnapshotApp(ctx context.Context, serverID string) (map[string]string, error)
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request, _ *caller) error {
	if s.Snapshots == nil {
		return apiErr(http.StatusServiceUnavailable, api.CodeUnavailable, "this server has no replica store")
	}
	list, err := s.Snapshots.List(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeList(w, list, "")
	return nil
}

func (s *Server) takeSnapshot(w http.ResponseWriter, r *http.Request, _ *caller) error {
	if s.Snapshots == nil {
		return apiErr(http.StatusServiceUnavailable, api.CodeUnavailable, "this server has no replica store")
	}
	var req api.TakeSnapshotRequest
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, &req); err != nil {
			return err
		}
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > 24*3600 {
		return badRequest("timeout_seconds %d: want 0 (300) to 86400", req.TimeoutSeconds)
	}
	timeout := 300 * time.Second
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds) * time.Second
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	srv, err := s.Store.Server(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	if srv.Archived {
		return archivedErr(srv.ID)
	}
	var snaps map[string]string
	switch req.Consistency {
	case "", api.ConsistencyCrash:
		snaps, err = s.Snapshots.Snapshot(ctx, r.PathValue("id"), req.Drain)
	case api.ConsistencyApp:
		as, ok := s.Snapshots.(AppSnapshots)
		if !ok {
			return apiErr(http.StatusServiceUnavailable, api.CodeUnavailable, "this server cannot take app-consistent snapshots")
		}
		snaps, err = as.SnapshotApp(ctx, r.PathValue("id"))
	default:
		return badRequest("consistency %q: want %s or %s", req.Consistency, api.ConsistencyCrash, api.ConsistencyApp)
	}
	if err != nil {
		return apiErr(http.StatusConflict, api.CodeConflict, "snapshot: %v", err)
	}
	writeJSON(w, http.StatusCreated, api.TakenSnapshots{Snapshots: snaps})
	return nil
}
