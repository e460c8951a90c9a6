package controlplane

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/sqlite"
)

// env is a control plane on a real SQLite store and CA, served over
// httptest, with one token per role.
type env struct {
	t      *testing.T
	srv    *Server
	store  ferry.Store
	ca     *pki.CA
	http   *httptest.Server
	tokens map[ferry.Role]string
	now    time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(filepath.Join(dir, "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, store: st, ca: ca, tokens: map[ferry.Role]string{}, now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	e.srv = &Server{Store: st, Signer: ca, DataPlaneAddr: "ferry.test:1500", Version: "test", FailedAuthLimit: 1 << 30, EventStreamMaxAge: 50 * time.Millisecond, Now: func() time.Time { return e.now }}
	ctx := context.Background()
	if err := EnsureDefaultTemplate(ctx, st); err != nil {
		t.Fatal(err)
	}
	for _, r := range []ferry.Role{ferry.RoleAdmin, ferry.RoleOperator, ferry.RoleViewer} {
		tok, err := CreateToken(ctx, st, string(r)+"-token", r, e.now, 0)
		if err != nil {
			t.Fatal(err)
		}
		e.tokens[r] = tok.Secret
	}
	e.http = httptest.NewServer(e.srv.Handler())
	t.Cleanup(e.http.Close)
	return e
}

// client is an API client with the token of role r ("" for none).
func (e *env) client(r ferry.Role) *api.Client {
	c, err := api.NewClient(e.http.URL, e.tokens[r], nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// do sends a raw request and returns status and body.
func (e *env) do(method, path, token string, body []byte) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.http.URL+APIPrefix+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// auditCount counts audit events with an outcome.
func (e *env) auditCount(outcome string) int {
	e.t.Helper()
	n := 0
	f := ferry.AuditFilter{Outcome: outcome, Limit: ferry.MaxPageSize}
	for {
		items, next, err := e.store.ListAudit(context.Background(), f)
		if err != nil {
			e.t.Fatal(err)
		}
		n += len(items)
		if next == "" {
			return n
		}
		f.After = next
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// addServer stores a server directly, for tests that need one without an
// agent.
func (e *env) addServer(id string, state ferry.LifecycleState) *ferry.SourceServer {
	e.t.Helper()
	s := &ferry.SourceServer{
		ID: id, MachineID: "m-" + id, Hostname: "host-" + id, Lifecycle: state,
		Replication:      ferry.ReplicationInfo{State: ferry.ReplicationStopped},
		ReplicationSetup: ferry.DefaultReplicationSettings(), LaunchSetup: ferry.DefaultLaunchSettings(),
		CreatedAt: e.now, UpdatedAt: e.now,
	}
	if err := e.store.CreateServer(context.Background(), s); err != nil {
		e.t.Fatal(err)
	}
	return s
}

func parseCert(p string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(p))
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	return x509.ParseCertificate(b.Bytes)
}
