package controlplane

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/jobs"
)

const maxJobServers = 1000

func (s *Server) startJob(start func(*jobs.Runner, context.Context, []string, jobs.Options) (*ferry.Job, error), allowOptions bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, _ *caller) error {
		if s.Jobs == nil {
			return apiErr(http.StatusServiceUnavailable, api.CodeUnavailable, "launches are not configured on this server")
		}
		var req api.StartJobRequest
		if err := decodeBody(w, r, &req); err != nil {
			return err
		}
		if len(req.SourceServerIDs) == 0 || len(req.SourceServerIDs) > maxJobServers {
			return badRequest("source_server_ids: give 1 to %d server ids", maxJobServers)
		}
		chosen := len(req.Snapshots) > 0 || !req.PointInTime.IsZero()
		if !allowOptions && (req.UseLatestSnapshot || req.SkipDrain || req.LaunchTemplateID != "" || chosen) {
			return badRequest("use_latest_snapshot, skip_drain, launch_template_id, snapshots and point_in_time do not apply to terminate")
		}
		if err := checkText("launch_template_id", req.LaunchTemplateID, maxNameLen); err != nil {
			return err
		}
		if len(req.Snapshots) > 0 && !req.PointInTime.IsZero() || chosen && req.UseLatestSnapshot {
			return badRequest("choose the snapshots one way: snapshots, point_in_time or use_latest_snapshot")
		}
		if len(req.Snapshots) > 0 && len(req.SourceServerIDs) > 1 {
			return badRequest("snapshots name one server's snapshots: give one source server id (point_in_time works for many)")
		}
		if len(req.Snapshots) > maxDisks {
			return badRequest("snapshots: at most %d disks", maxDisks)
		}
		for disk, id := range req.Snapshots {
			if err := checkText("snapshots (disk name)", disk, maxNameLen); err != nil && disk != "" {
				return err
			}
			if id == "" {
				return badRequest("snapshots[%s]: give a snapshot id (ferry snapshots list shows them)", disk)
			}
			if err := checkText("snapshots["+disk+"]", id, maxNameLen); err != nil {
				return err
			}
		}
		if !req.PointInTime.IsZero() && req.PointInTime.After(time.Now().Add(time.Minute)) {
			return badRequest("point_in_time %s is in the future", req.PointInTime.Format(time.RFC3339))
		}
		job, err := start(s.Jobs, r.Context(), req.SourceServerIDs, jobs.Options{UseLatest: req.UseLatestSnapshot, SkipDrain: req.SkipDrain,
			LaunchTemplate: req.LaunchTemplateID, Snapshots: req.Snapshots, PointInTime: req.PointInTime})
		if errors.Is(err, jobs.ErrBusy) {
			return apiErr(http.StatusConflict, api.CodeConflict, "%v", err)
		}
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusAccepted, job)
		return nil
	}
}

func (s *Server) finalizeCutover(w http.ResponseWriter, r *http.Request, _ *caller) error {
	if s.Jobs == nil {
		return apiErr(http.StatusServiceUnavailable, api.CodeUnavailable, "launches are not configured on this server")
	}
	srv, err := s.Jobs.Finalize(r.Context(), r.PathValue("id"))
	if errors.Is(err, jobs.ErrBusy) {
		return apiErr(http.StatusConflict, api.CodeConflict, "%v", err)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, srv)
	return nil
}
