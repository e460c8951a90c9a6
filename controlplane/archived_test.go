package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/jobs"
)

// TestActionsOnArchivedServer tries every action on an archived server:
// each is refused with a message that names the server and says it is
// archived (or that there is nothing to do), and nothing changes.
func TestActionsOnArchivedServer(t *testing.T) {
	e := newEnv(t)
	e.srv.Jobs = &jobs.Runner{Store: e.store, Snapshots: fakeLaunch{}, Launcher: fakeLaunch{}}
	// Snapshots come from the replication server; any will do, the
	// archived check comes first.
	e.srv.Snapshots = fakeSnapshots{}
	e.addServer("s-arch", ferry.LifecycleDisconnected)
	op := e.tokens[ferry.RoleOperator]
	if status, body := e.do(http.MethodPost, "/servers/s-arch/archive", op, nil); status != http.StatusOK {
		t.Fatalf("archive: %d %s", status, body)
	}
	jobBody := []byte(`{"source_server_ids":["s-arch"]}`)
	tests := []struct {
		name, method, path string
		body               []byte
		status             int
		contains           string
	}{
		{"update", http.MethodPatch, "/servers/s-arch", []byte(`{"tags":{"a":"b"}}`), http.StatusConflict, "archived; unarchive it first"},
		{"lifecycle", http.MethodPost, "/servers/s-arch/lifecycle", []byte(`{"state":"READY_FOR_TEST"}`), http.StatusConflict, "archived; unarchive it first"},
		{"pause", http.MethodPost, "/servers/s-arch/replication/pause", nil, http.StatusConflict, "archived"},
		{"resume", http.MethodPost, "/servers/s-arch/replication/resume", nil, http.StatusConflict, "archived"},
		{"stop", http.MethodPost, "/servers/s-arch/replication/stop", nil, http.StatusConflict, "archived"},
		{"start", http.MethodPost, "/servers/s-arch/replication/start", nil, http.StatusConflict, "archived"},
		{"retry", http.MethodPost, "/servers/s-arch/replication/retry", nil, http.StatusConflict, "archived"},
		{"test launch", http.MethodPost, "/jobs/start-test", jobBody, http.StatusBadRequest, "archived; unarchive it first"},
		{"cutover", http.MethodPost, "/jobs/start-cutover", jobBody, http.StatusBadRequest, "archived; unarchive it first"},
		{"terminate", http.MethodPost, "/jobs/terminate", jobBody, http.StatusBadRequest, "archived; unarchive it first"},
		// Only DISCONNECTED or CUTOVER servers are archived; finalize needs
		// CUTTING_OVER and says so.
		{"finalize", http.MethodPost, "/servers/s-arch/finalize", nil, http.StatusBadRequest, "finalize needs a launched cutover instance"},
		{"snapshot", http.MethodPost, "/servers/s-arch/snapshots", nil, http.StatusConflict, "archived; unarchive it first"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := e.store.Server(context.Background(), "s-arch")
			status, body := e.do(tt.method, tt.path, op, tt.body)
			var ae api.Error
			if err := json.Unmarshal(body, &ae); err != nil {
				t.Fatalf("status %d, body is not a JSON error: %s", status, body)
			}
			if status != tt.status || !strings.Contains(ae.Message, tt.contains) || !strings.Contains(ae.Message, "s-arch") {
				t.Fatalf("status %d %q, want %d naming s-arch and containing %q", status, ae.Message, tt.status, tt.contains)
			}
			e.srv.Jobs.Wait()
			after, _ := e.store.Server(context.Background(), "s-arch")
			if mustJSONString(t, before) != mustJSONString(t, after) {
				t.Fatal("a refused action changed the server")
			}
		})
	}
}

// TestExpiredAndRevokedTokens: a token whose time ran out gets a 401 that
// says the session expired and to sign in again (the dashboard shows it);
// a revoked one says it was revoked.
func TestExpiredAndRevokedTokens(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	short, err := CreateToken(ctx, e.store, "short", ferry.RoleViewer, e.now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := CreateToken(ctx, e.store, "revoked", ferry.RoleViewer, e.now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if status, body := e.do(http.MethodGet, "/servers", short.Secret, nil); status != http.StatusOK {
		t.Fatalf("fresh token: %d %s", status, body)
	}
	e.now = e.now.Add(2 * time.Minute)
	if err := e.store.RevokeToken(ctx, revoked.Token.ID, e.now); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, secret, code, contains string
	}{
		{"expired", short.Secret, api.CodeTokenExpired, "session expired"},
		{"revoked", revoked.Secret, api.CodeUnauthorized, "was revoked"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body := e.do(http.MethodGet, "/servers", tt.secret, nil)
			var ae api.Error
			_ = json.Unmarshal(body, &ae)
			if status != http.StatusUnauthorized || ae.Code != tt.code || !strings.Contains(ae.Message, tt.contains) || !strings.Contains(ae.Message, "sign in") {
				t.Fatalf("got %d %s %q, want 401 %s containing %q and how to sign in", status, ae.Code, ae.Message, tt.code, tt.contains)
			}
		})
	}
}

// fakeSnapshots stands in for the replication server; the archived check
// must refuse before it is asked, so any call shows up as a wrong message.
type fakeSnapshots struct{}

func (fakeSnapshots) Snapshot(context.Context, string, bool) (map[string]string, error) {
	return nil, errors.New("the replication server was asked for a snapshot")
}

func (fakeSnapshots) List(context.Context, string) ([]api.Snapshot, error) { return nil, nil }
