package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// TestBadInput sends what clients get wrong and checks each gets a clear
// 4xx JSON error, changes nothing, and is audited when it mutates.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	e.addServer("s-1", ferry.LifecycleNotReady)
	admin, op, viewer := e.tokens[ferry.RoleAdmin], e.tokens[ferry.RoleOperator], e.tokens[ferry.RoleViewer]
	big := append([]byte(`{"name":"`), bytes.Repeat([]byte("a"), MaxBodyBytes+10)...)
	big = append(big, `"}`...)
	tests := []struct {
		name, method, path, token string
		body                      []byte
		status                    int
		code, contains            string
	}{
		{"malformed json", "POST", "/tokens", admin, []byte(`{"name":`), 400, api.CodeBadRequest, "truncated"},
		{"syntax error", "POST", "/tokens", admin, []byte(`{"name" "x"}`), 400, api.CodeBadRequest, "malformed JSON"},
		{"unknown field", "POST", "/tokens", admin, []byte(`{"name":"x","role":"admin","colour":1}`), 400, api.CodeBadRequest, "colour"},
		{"wrong type", "POST", "/tokens", admin, []byte(`{"name":5,"role":"admin"}`), 400, api.CodeBadRequest, `"name"`},
		{"not an object", "POST", "/tokens", admin, []byte(`[1,2]`), 400, api.CodeBadRequest, "object"},
		{"trailing data", "POST", "/tokens", admin, []byte(`{"name":"x","role":"admin"} {}`), 400, api.CodeBadRequest, "after the JSON"},
		{"empty body", "POST", "/tokens", admin, []byte(``), 400, api.CodeBadRequest, "empty"},
		{"too large", "POST", "/tokens", admin, big, 413, api.CodeTooLarge, "larger than"},
		{"bad role", "POST", "/tokens", admin, []byte(`{"name":"x","role":"root"}`), 400, api.CodeBadRequest, "role"},
		{"missing name", "POST", "/tokens", admin, []byte(`{"role":"viewer"}`), 400, api.CodeBadRequest, "name is required"},
		{"control char name", "POST", "/waves", op, []byte(`{"name":"a\u0007b"}`), 400, api.CodeBadRequest, "control"},
		{"install token never expires", "POST", "/install-tokens", admin, []byte(`{"name":"x"}`), 400, api.CodeBadRequest, "must expire"},
		{"install token unknown app", "POST", "/install-tokens", admin, []byte(`{"name":"x","expires_in_seconds":60,"application_id":"app-nope"}`), 400, api.CodeBadRequest, "application_id"},
		{"limit zero", "GET", "/servers?limit=0", viewer, nil, 400, api.CodeBadRequest, "limit"},
		{"limit huge", "GET", "/servers?limit=100000", viewer, nil, 400, api.CodeBadRequest, "limit"},
		{"limit text", "GET", "/servers?limit=ten", viewer, nil, 400, api.CodeBadRequest, "limit"},
		{"bad cursor", "GET", "/servers?next_token=%00%01garbage", viewer, nil, 400, api.CodeBadRequest, ""},
		{"bad state filter", "GET", "/servers?lifecycle_state=FLYING", viewer, nil, 400, api.CodeBadRequest, "FLYING"},
		{"unknown filter", "GET", "/servers?colour=red", viewer, nil, 400, api.CodeBadRequest, "colour"},
		{"bad archived", "GET", "/servers?archived=maybe", viewer, nil, 400, api.CodeBadRequest, "archived"},
		{"unknown server", "GET", "/servers/s-nope", viewer, nil, 404, api.CodeNotFound, "s-nope"},
		{"illegal transition", "POST", "/servers/s-1/lifecycle", op, []byte(`{"state":"CUTOVER"}`), 409, api.CodeInvalidTransition, "NOT_READY to CUTOVER"},
		{"not a manual state", "POST", "/servers/s-1/lifecycle", op, []byte(`{"state":"TESTING"}`), 400, api.CodeBadRequest, "READY_FOR_TEST"},
		{"archive too early", "POST", "/servers/s-1/archive", op, nil, 409, api.CodeInvalidTransition, "DISCONNECTED or CUTOVER"},
		{"bad launch settings", "PATCH", "/servers/s-1", op, []byte(`{"launch_settings":{"cpus":0}}`), 400, api.CodeBadRequest, "launch_disposition"},
		{"too many tags", "PATCH", "/servers/s-1", op, tagsBody(60), 400, api.CodeBadRequest, "tags"},
		{"viewer mutates", "PATCH", "/servers/s-1", viewer, []byte(`{"tags":{}}`), 403, api.CodeForbidden, "viewer"},
		{"bad bearer", "GET", "/servers", "fyt_nope_nope", nil, 401, api.CodeUnauthorized, "invalid API token"},
		{"no route", "GET", "/nothing", viewer, nil, 404, api.CodeNotFound, "no API route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := e.store.Server(context.Background(), "s-1")
			errsBefore := e.auditCount(ferry.OutcomeError) + e.auditCount(ferry.OutcomeDenied)
			status, body := e.do(tt.method, tt.path, tt.token, tt.body)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %s", status, tt.status, body)
			}
			var ae api.Error
			if err := json.Unmarshal(body, &ae); err != nil {
				t.Fatalf("body is not a JSON error: %s", body)
			}
			if ae.Code != tt.code || !strings.Contains(ae.Message, tt.contains) {
				t.Fatalf("error %s %q, want %s containing %q", ae.Code, ae.Message, tt.code, tt.contains)
			}
			after, _ := e.store.Server(context.Background(), "s-1")
			if mustJSONString(t, before) != mustJSONString(t, after) {
				t.Fatal("a refused request changed the server")
			}
			mutating := tt.method != http.MethodGet
			if (mutating || tt.status == 401 || tt.status == 403) && e.auditCount(ferry.OutcomeError)+e.auditCount(ferry.OutcomeDenied) != errsBefore+1 {
				t.Fatal("the refused call was not audited")
			}
		})
	}
}

func tagsBody(n int) []byte {
	tags := map[string]string{}
	for i := 0; i < n; i++ {
		tags[strings.Repeat("k", i+1)] = "v"
	}
	b, _ := json.Marshal(map[string]any{"tags": tags})
	return b
}

func mustJSONString(t *testing.T, v any) string { return string(mustJSON(t, v)) }

func TestUnsupportedMediaType(t *testing.T) {
	e := newEnv(t)
	req, _ := http.NewRequest("POST", e.http.URL+APIPrefix+"/waves", strings.NewReader(`{"name":"w"}`))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Authorization", "Bearer "+e.tokens[ferry.RoleOperator])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("status %d, want 415", resp.StatusCode)
	}
}

func TestFailedSignInsAreRateLimited(t *testing.T) {
	e := newEnv(t)
	e.srv.FailedAuthLimit = 3
	e.srv.limiter = nil
	e.http.Config.Handler = e.srv.Handler()
	for i := 0; i < 3; i++ {
		if st, _ := e.do("GET", "/servers", "fyt_bad_guess", nil); st != 401 {
			t.Fatalf("attempt %d: status %d, want 401", i, st)
		}
	}
	// Even the right token is refused from that address for the minute.
	if st, _ := e.do("GET", "/servers", e.tokens[ferry.RoleViewer], nil); st != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429", st)
	}
	e.now = e.now.Add(61 * 1e9)
	if st, body := e.do("GET", "/servers", e.tokens[ferry.RoleViewer], nil); st != 200 {
		t.Fatalf("after the window: %d %s", st, body)
	}
}

func TestLifecycleAndArchive(t *testing.T) {
	e := newEnv(t)
	e.addServer("s-1", ferry.LifecycleNotReady)
	op := e.tokens[ferry.RoleOperator]
	steps := []struct {
		method, path string
		body         string
		status       int
		want         ferry.LifecycleState
	}{
		{"POST", "/servers/s-1/lifecycle", `{"state":"READY_FOR_TEST"}`, 200, ferry.LifecycleReadyForTest},
		{"POST", "/servers/s-1/lifecycle", `{"state":"READY_FOR_CUTOVER"}`, 200, ferry.LifecycleReadyForCutover},
		{"POST", "/servers/s-1/disconnect", ``, 200, ferry.LifecycleDisconnected},
		{"POST", "/servers/s-1/archive", ``, 200, ferry.LifecycleDisconnected},
		{"POST", "/servers/s-1/lifecycle", `{"state":"READY_FOR_TEST"}`, 409, ferry.LifecycleDisconnected},
	}
	for i, s := range steps {
		var body []byte
		if s.body != "" {
			body = []byte(s.body)
		}
		status, resp := e.do(s.method, s.path, op, body)
		if status != s.status {
			t.Fatalf("step %d: %d %s", i, status, resp)
		}
		srv, _ := e.store.Server(t.Context(), "s-1")
		if srv.Lifecycle != s.want {
			t.Fatalf("step %d: state %s, want %s", i, srv.Lifecycle, s.want)
		}
	}
	srv, _ := e.store.Server(t.Context(), "s-1")
	if !srv.Archived || srv.AgentCertSerial != "" {
		t.Fatalf("archived=%v serial=%q", srv.Archived, srv.AgentCertSerial)
	}
	// Archived servers leave the default list.
	l, err := e.client(ferry.RoleViewer).ListServers(t.Context(), nil)
	if err != nil || len(l.Items) != 0 {
		t.Fatalf("default list shows archived: %v %v", l, err)
	}
}

func TestListPagination(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 23; i++ {
		e.addServer("s-"+string(rune('a'+i)), ferry.LifecycleNotReady)
	}
	c := e.client(ferry.RoleViewer)
	seen := map[string]bool{}
	q := map[string][]string{"limit": {"5"}}
	pages := 0
	for {
		page, err := c.ListServers(t.Context(), q)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, s := range page.Items {
			if seen[s.ID] {
				t.Fatalf("%s twice", s.ID)
			}
			seen[s.ID] = true
		}
		if page.NextToken == "" {
			break
		}
		q["next_token"] = []string{page.NextToken}
	}
	if len(seen) != 23 || pages != 5 {
		t.Fatalf("saw %d servers in %d pages, want 23 in 5", len(seen), pages)
	}
	l, err := c.ListServers(t.Context(), map[string][]string{"text": {"HOST-S-C"}})
	if err != nil || len(l.Items) != 1 || l.Items[0].ID != "s-c" {
		t.Fatalf("text filter: %v %v", l, err)
	}
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{
		`{"name":"x","role":"admin"}`, `{"install_token":"fyi_a_b","machine_id":"m","csr":"x","disks":[{"name":"sda"}]}`,
		`{"tags":{"a":"b"},"launch_settings":{"cpus":2}}`, `[`, `{"a":1}{}`, `null`, `{"name":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range []any{&api.CreateTokenRequest{}, &api.PairRequest{}, &api.UpdateServerRequest{}, &api.GroupRequest{}, &api.CreateInstallTokenRequest{}} {
			err := decodeJSON(bytes.NewReader(data), v)
			if err == nil {
				continue
			}
			ae := toAPIError(err)
			if ae.Status < 400 || ae.Status >= 500 || ae.Message == "" {
				t.Fatalf("decode error maps to %d %q", ae.Status, ae.Message)
			}
		}
		var req api.PairRequest
		if decodeJSON(bytes.NewReader(data), &req) == nil {
			_ = checkPairRequest(&req)
		}
	})
}

func TestReplicationControls(t *testing.T) {
	e := newEnv(t)
	e.addServer("s-1", ferry.LifecycleReadyForTest)
	op := e.tokens[ferry.RoleOperator]
	steps := []struct {
		action string
		status int
		want   ferry.DesiredReplication
	}{
		{"resume", 409, ferry.DesiredRun},
		{"start", 409, ferry.DesiredRun},
		{"pause", 200, ferry.DesiredPause},
		{"pause", 409, ferry.DesiredPause},
		{"resume", 200, ferry.DesiredRun},
		{"stop", 200, ferry.DesiredStop},
		{"pause", 409, ferry.DesiredStop},
		{"start", 200, ferry.DesiredRun},
		{"retry", 200, ferry.DesiredRun},
	}
	for i, s := range steps {
		status, body := e.do("POST", "/servers/s-1/replication/"+s.action, op, nil)
		if status != s.status {
			t.Fatalf("step %d %s: %d %s", i, s.action, status, body)
		}
		srv, _ := e.store.Server(t.Context(), "s-1")
		if srv.Desired != s.want {
			t.Fatalf("step %d %s: desired %q, want %q", i, s.action, srv.Desired, s.want)
		}
	}
}
