package controlplane

import (
	"context"
	"net/http"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// DefaultTemplateID is the template new servers copy their settings from.
const DefaultTemplateID = "default"

// EnsureDefaultTemplate creates the default template with Ferry's default
// settings if it is missing.
func EnsureDefaultTemplate(ctx context.Context, st ferry.Store) error {
	_, err := st.Template(ctx, DefaultTemplateID)
	if !isNotFound(err) {
		return err
	}
	t := &ferry.Template{
		ID: DefaultTemplateID, Name: "default",
		Replication: ferry.DefaultReplicationSettings(), Launch: ferry.DefaultLaunchSettings(),
	}
	if err := st.CreateTemplate(ctx, t); err != nil && !isConflict(err) {
		return err
	}
	return nil
}

func (s *Server) defaultTemplate(ctx context.Context) (*ferry.Template, error) {
	t, err := s.Store.Template(ctx, DefaultTemplateID)
	if isNotFound(err) {
		if err := EnsureDefaultTemplate(ctx, s.Store); err != nil {
			return nil, err
		}
		return s.Store.Template(ctx, DefaultTemplateID)
	}
	return t, err
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ts, err := s.Store.ListTemplates(r.Context())
	if err != nil {
		return err
	}
	writeList(w, ts, "")
	return nil
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request, _ *caller) error {
	t, err := s.Store.Template(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

func (s *Server) createTemplate(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.CreateTemplateRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if err := checkName("name", req.Name); err != nil {
		return err
	}
	t := &ferry.Template{ID: newID("lt"), Name: req.Name, Replication: ferry.DefaultReplicationSettings(), Launch: ferry.DefaultLaunchSettings()}
	if req.Replication != nil {
		if err := checkReplicationSettings(req.Replication); err != nil {
			return err
		}
		t.Replication = *req.Replication
	}
	if req.Launch != nil {
		if err := checkLaunchSettings(req.Launch); err != nil {
			return err
		}
		t.Launch = *req.Launch
	}
	if err := s.Store.CreateTemplate(r.Context(), t); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, t)
	return nil
}

func (s *Server) updateTemplate(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.UpdateTemplateRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if req.Name != nil {
		if err := checkName("name", *req.Name); err != nil {
			return err
		}
	}
	if req.Replication != nil {
		if err := checkReplicationSettings(req.Replication); err != nil {
			return err
		}
	}
	if req.Launch != nil {
		if err := checkLaunchSettings(req.Launch); err != nil {
			return err
		}
	}
	t, err := s.Store.UpdateTemplate(r.Context(), r.PathValue("id"), func(t *ferry.Template) error {
		if req.Name != nil {
			t.Name = *req.Name
		}
		if req.Replication != nil {
			t.Replication = *req.Replication
		}
		if req.Launch != nil {
			t.Launch = *req.Launch
		}
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request, _ *caller) error {
	id := r.PathValue("id")
	if id == DefaultTemplateID {
		return apiErr(http.StatusConflict, api.CodeConflict, "the default template cannot be deleted; change it instead")
	}
	if err := s.Store.DeleteTemplate(r.Context(), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
