package controlplane

import (
	_ "embed"
	"net/http"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

func (s *Server) health(w http.ResponseWriter, _ *http.Request, _ *caller) error {
	writeJSON(w, http.StatusOK, api.Health{Status: "ok", Version: s.Version, Time: s.now()})
	return nil
}

func (s *Server) openapi(w http.ResponseWriter, _ *http.Request, _ *caller) error {
	w.Header().Set("Content-Type", "application/yaml")
	_, err := w.Write(api.OpenAPI)
	return err
}

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request, _ *caller) error {
	q := r.URL.Query()
	if err := checkParams(q, "source_server_id", "status", "limit", "next_token"); err != nil {
		return err
	}
	var f ferry.JobFilter
	var err error
	if f.Limit, f.After, err = page(q); err != nil {
		return err
	}
	f.SourceServerID = q.Get("source_server_id")
	f.Status = ferry.JobStatus(q.Get("status"))
	switch f.Status {
	case "", ferry.JobPending, ferry.JobStarted, ferry.JobCompleted:
	default:
		return badRequest("status %q: want PENDING, STARTED or COMPLETED", f.Status)
	}
	items, next, err := s.Store.ListJobs(r.Context(), f)
	if err != nil {
		return err
	}
	writeList(w, items, next)
	return nil
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request, _ *caller) error {
	j, err := s.Store.Job(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	log, err := s.Store.JobLog(r.Context(), j.ID)
	if err != nil {
		return err
	}
	if log == nil {
		log = []ferry.JobLogItem{}
	}
	writeJSON(w, http.StatusOK, api.JobWithLog{Job: *j, Log: log})
	return nil
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request, _ *caller) error {
	q := r.URL.Query()
	if err := checkParams(q, "actor", "outcome", "limit", "next_token"); err != nil {
		return err
	}
	var f ferry.AuditFilter
	var err error
	if f.Limit, f.After, err = page(q); err != nil {
		return err
	}
	f.Actor, f.Outcome = q.Get("actor"), q.Get("outcome")
	switch f.Outcome {
	case "", ferry.OutcomeSuccess, ferry.OutcomeDenied, ferry.OutcomeError:
	default:
		return badRequest("outcome %q: want success, denied or error", f.Outcome)
	}
	items, next, err := s.Store.ListAudit(r.Context(), f)
	if err != nil {
		return err
	}
	writeList(w, items, next)
	return nil
}
