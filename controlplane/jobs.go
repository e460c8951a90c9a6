package controlplane

import (
	"context"
	"errors"
	"net/http"

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
		if !allowOptions && (req.UseLatestSnapshot || req.SkipDrain || req.LaunchTemplateID != "") {
			return badRequest("use_latest_snapshot, skip_drain and launch_template_id do not apply to terminate")
		}
		if err := checkText("launch_template_id", req.LaunchTemplateID, maxNameLen); err != nil {
			return err
		}
		job, err := start(s.Jobs, r.Context(), req.SourceServerIDs, jobs.Options{UseLatest: req.UseLatestSnapshot, SkipDrain: req.SkipDrain, LaunchTemplate: req.LaunchTemplateID})
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
