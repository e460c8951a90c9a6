package controlplane

import (
	"context"
	"net/http"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

func groupFilter(r *http.Request, withWave bool) (ferry.GroupFilter, error) {
	q := r.URL.Query()
	allowed := []string{"text", "archived", "limit", "next_token"}
	if withWave {
		allowed = append(allowed, "wave_id")
	}
	var f ferry.GroupFilter
	if err := checkParams(q, allowed...); err != nil {
		return f, err
	}
	var err error
	if f.Limit, f.After, err = page(q); err != nil {
		return f, err
	}
	if f.Archived, err = boolParam(q, "archived"); err != nil {
		return f, err
	}
	f.Text, f.WaveID = q.Get("text"), q.Get("wave_id")
	return f, nil
}

// checkGroup validates a create (name required) or update request.
func checkGroup(req *api.GroupRequest, create bool) error {
	if create && req.Name == nil {
		return badRequest("name is required")
	}
	if req.Name != nil {
		if err := checkName("name", *req.Name); err != nil {
			return err
		}
	}
	if req.Description != nil {
		if err := checkText("description", *req.Description, maxDescLen); err != nil {
			return err
		}
	}
	if req.Tags != nil {
		return checkTags(*req.Tags)
	}
	return nil
}

func (s *Server) checkWaveRef(ctx context.Context, id *string) error {
	if id == nil || *id == "" {
		return nil
	}
	_, err := s.Store.Wave(ctx, *id)
	return wrapRef("wave_id", err)
}

func (s *Server) listApplications(w http.ResponseWriter, r *http.Request, _ *caller) error {
	f, err := groupFilter(r, true)
	if err != nil {
		return err
	}
	items, next, err := s.Store.ListApplications(r.Context(), f)
	if err != nil {
		return err
	}
	out := api.List[api.ApplicationStatus]{Items: make([]api.ApplicationStatus, 0, len(items)), NextToken: next}
	if len(items) > 0 {
		m, err := s.loadMembership(r.Context())
		if err != nil {
			return err
		}
		for _, a := range items {
			out.Items = append(out.Items, s.applicationStatus(m, a))
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getApplication(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ctx := r.Context()
	a, err := s.Store.Application(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	members, err := allServers(ctx, s.Store, ferry.ServerFilter{ApplicationID: a.ID})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.ApplicationStatus{Application: *a, Summary: Summarize(members, s.lagThreshold())})
	return nil
}

func (s *Server) createApplication(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.GroupRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if err := checkGroup(&req, true); err != nil {
		return err
	}
	if err := s.checkWaveRef(r.Context(), req.WaveID); err != nil {
		return err
	}
	now := s.now()
	a := &ferry.Application{ID: newID("app"), Name: *req.Name, CreatedAt: now, UpdatedAt: now}
	applyApplication(a, &req)
	if err := s.Store.CreateApplication(r.Context(), a); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, a)
	return nil
}

func applyApplication(a *ferry.Application, req *api.GroupRequest) {
	if req.Name != nil {
		a.Name = *req.Name
	}
	if req.Description != nil {
		a.Description = *req.Description
	}
	if req.WaveID != nil {
		a.WaveID = *req.WaveID
	}
	if req.Tags != nil {
		a.Tags = *req.Tags
	}
}

func (s *Server) updateApplication(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.GroupRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if err := checkGroup(&req, false); err != nil {
		return err
	}
	if err := s.checkWaveRef(r.Context(), req.WaveID); err != nil {
		return err
	}
	now := s.now()
	a, err := s.Store.UpdateApplication(r.Context(), r.PathValue("id"), func(a *ferry.Application) error {
		applyApplication(a, &req)
		a.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, a)
	return nil
}

func (s *Server) deleteApplication(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ctx := r.Context()
	id := r.PathValue("id")
	if _, err := s.Store.Application(ctx, id); err != nil {
		return err
	}
	members, _, err := s.Store.ListServers(ctx, ferry.ServerFilter{ApplicationID: id, Limit: 1})
	if err != nil {
		return err
	}
	if len(members) > 0 {
		return apiErr(http.StatusConflict, api.CodeConflict, "application %s still has servers (e.g. %s); move them out first", id, members[0].ID)
	}
	if err := s.Store.DeleteApplication(ctx, id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listWaves(w http.ResponseWriter, r *http.Request, _ *caller) error {
	f, err := groupFilter(r, false)
	if err != nil {
		return err
	}
	items, next, err := s.Store.ListWaves(r.Context(), f)
	if err != nil {
		return err
	}
	out := api.List[api.WaveStatus]{Items: make([]api.WaveStatus, 0, len(items)), NextToken: next}
	if len(items) > 0 {
		m, err := s.loadMembership(r.Context())
		if err != nil {
			return err
		}
		for _, wv := range items {
			out.Items = append(out.Items, s.waveStatus(m, wv))
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getWave(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ctx := r.Context()
	wv, err := s.Store.Wave(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	members, err := s.waveMembers(ctx, wv.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.WaveStatus{Wave: *wv, Summary: Summarize(members, s.lagThreshold())})
	return nil
}

// waveMembers returns the live servers of a wave: those assigned to it and
// those of its applications that are assigned to no wave themselves.
func (s *Server) waveMembers(ctx context.Context, id string) ([]*ferry.SourceServer, error) {
	members, err := allServers(ctx, s.Store, ferry.ServerFilter{WaveID: id})
	if err != nil {
		return nil, err
	}
	apps, err := allApplications(ctx, s.Store, ferry.GroupFilter{WaveID: id})
	if err != nil {
		return nil, err
	}
	for _, a := range apps {
		srvs, err := allServers(ctx, s.Store, ferry.ServerFilter{ApplicationID: a.ID})
		if err != nil {
			return nil, err
		}
		for _, srv := range srvs {
			if srv.WaveID == "" {
				members = append(members, srv)
			}
		}
	}
	return members, nil
}

func (s *Server) createWave(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.GroupRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if req.WaveID != nil {
		return badRequest("wave_id is for applications, not waves")
	}
	if err := checkGroup(&req, true); err != nil {
		return err
	}
	now := s.now()
	wv := &ferry.Wave{ID: newID("wave"), CreatedAt: now, UpdatedAt: now}
	applyWave(wv, &req)
	if err := s.Store.CreateWave(r.Context(), wv); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, wv)
	return nil
}

func applyWave(wv *ferry.Wave, req *api.GroupRequest) {
	if req.Name != nil {
		wv.Name = *req.Name
	}
	if req.Description != nil {
		wv.Description = *req.Description
	}
	if req.Tags != nil {
		wv.Tags = *req.Tags
	}
}

func (s *Server) updateWave(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.GroupRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if req.WaveID != nil {
		return badRequest("wave_id is for applications, not waves")
	}
	if err := checkGroup(&req, false); err != nil {
		return err
	}
	now := s.now()
	wv, err := s.Store.UpdateWave(r.Context(), r.PathValue("id"), func(wv *ferry.Wave) error {
		applyWave(wv, &req)
		wv.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wv)
	return nil
}

func (s *Server) deleteWave(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ctx := r.Context()
	id := r.PathValue("id")
	if _, err := s.Store.Wave(ctx, id); err != nil {
		return err
	}
	apps, _, err := s.Store.ListApplications(ctx, ferry.GroupFilter{WaveID: id, Limit: 1})
	if err != nil {
		return err
	}
	if len(apps) > 0 {
		return apiErr(http.StatusConflict, api.CodeConflict, "wave %s still has applications (e.g. %s); move them out first", id, apps[0].ID)
	}
	members, _, err := s.Store.ListServers(ctx, ferry.ServerFilter{WaveID: id, Limit: 1})
	if err != nil {
		return err
	}
	if len(members) > 0 {
		return apiErr(http.StatusConflict, api.CodeConflict, "wave %s still has servers (e.g. %s); move them out first", id, members[0].ID)
	}
	if err := s.Store.DeleteWave(ctx, id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
