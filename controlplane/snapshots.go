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
	if _, err := s.Store.Server(ctx, r.PathValue("id")); err != nil {
		return err
	}
	snaps, err := s.Snapshots.Snapshot(ctx, r.PathValue("id"), req.Drain)
	if err != nil {
		return apiErr(http.StatusConflict, api.CodeConflict, "snapshot: %v", err)
	}
	writeJSON(w, http.StatusCreated, api.TakenSnapshots{Snapshots: snaps})
	return nil
}
