package controlplane

import (
	"context"
	"net/http"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/auth"
)

// CreateToken makes an API token and stores its hash; the returned secret
// is the only copy. The server uses it to make the first admin token.
func CreateToken(ctx context.Context, st ferry.Store, name string, role ferry.Role, now time.Time, ttl time.Duration) (*api.CreatedToken, error) {
	sec, err := auth.New(auth.APITokenPrefix)
	if err != nil {
		return nil, err
	}
	t := ferry.Token{ID: sec.ID, Name: name, Role: role, Hash: sec.Hash, CreatedAt: now}
	if ttl > 0 {
		t.ExpiresAt = now.Add(ttl)
	}
	if err := st.CreateToken(ctx, &t); err != nil {
		return nil, err
	}
	return &api.CreatedToken{Token: t, Secret: sec.Plain}, nil
}

func (s *Server) whoami(w http.ResponseWriter, _ *http.Request, c *caller) error {
	writeJSON(w, http.StatusOK, api.WhoAmI{TokenID: c.token.ID, Name: c.token.Name, Role: c.token.Role})
	return nil
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ts, err := s.Store.ListTokens(r.Context())
	if err != nil {
		return err
	}
	writeList(w, ts, "")
	return nil
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.CreateTokenRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if err := checkName("name", req.Name); err != nil {
		return err
	}
	if !req.Role.Valid() {
		return badRequest("role %q: want admin, operator or viewer", req.Role)
	}
	if req.ExpiresInSeconds < 0 || req.ExpiresInSeconds > 10*365*24*3600 {
		return badRequest("expires_in_seconds %d: want 0 (never) to ten years", req.ExpiresInSeconds)
	}
	t, err := CreateToken(r.Context(), s.Store, req.Name, req.Role, s.now(), time.Duration(req.ExpiresInSeconds)*time.Second)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, t)
	return nil
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request, _ *caller) error {
	if err := s.Store.RevokeToken(r.Context(), r.PathValue("id"), s.now()); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listInstallTokens(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ts, err := s.Store.ListInstallTokens(r.Context())
	if err != nil {
		return err
	}
	writeList(w, ts, "")
	return nil
}

// maxInstallTokenTTL bounds install tokens: they are for a rollout, not
// forever.
const maxInstallTokenTTL = 90 * 24 * time.Hour

func (s *Server) createInstallToken(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.CreateInstallTokenRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if err := checkName("name", req.Name); err != nil {
		return err
	}
	ttl := time.Duration(req.ExpiresInSeconds) * time.Second
	if req.ExpiresInSeconds <= 0 || ttl > maxInstallTokenTTL {
		return badRequest("expires_in_seconds %d: install tokens must expire, within %d seconds (90 days)", req.ExpiresInSeconds, int64(maxInstallTokenTTL/time.Second))
	}
	if req.MaxUses < 0 {
		return badRequest("max_uses %d must not be negative (0 means no limit)", req.MaxUses)
	}
	if err := checkTags(req.Tags); err != nil {
		return err
	}
	ctx := r.Context()
	if req.ApplicationID != "" {
		if _, err := s.Store.Application(ctx, req.ApplicationID); err != nil {
			return wrapRef("application_id", err)
		}
	}
	if req.WaveID != "" {
		if _, err := s.Store.Wave(ctx, req.WaveID); err != nil {
			return wrapRef("wave_id", err)
		}
	}
	sec, err := auth.New(auth.InstallTokenPrefix)
	if err != nil {
		return err
	}
	now := s.now()
	t := ferry.InstallToken{
		ID: sec.ID, Name: req.Name, Hash: sec.Hash, ApplicationID: req.ApplicationID,
		WaveID: req.WaveID, Tags: req.Tags, MaxUses: req.MaxUses, CreatedAt: now, ExpiresAt: now.Add(ttl),
	}
	if err := s.Store.CreateInstallToken(ctx, &t); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, api.CreatedInstallToken{InstallToken: t, Secret: sec.Plain})
	return nil
}

func (s *Server) revokeInstallToken(w http.ResponseWriter, r *http.Request, _ *caller) error {
	if err := s.Store.RevokeInstallToken(r.Context(), r.PathValue("id"), s.now()); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
