package controlplane

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry"
)

// TestRouteRoleMatrix calls every route as nobody, viewer, operator and
// admin, and as a revoked admin, and checks that exactly the roles the
// route table allows get past authorisation, and that every denial is
// audited.
func TestRouteRoleMatrix(t *testing.T) {
	e := newEnv(t)
	revoked, err := CreateToken(t.Context(), e.store, "revoked", ferry.RoleAdmin, e.now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.RevokeToken(t.Context(), revoked.ID, e.now); err != nil {
		t.Fatal(err)
	}
	callers := []struct {
		name  string
		role  ferry.Role
		token string
	}{
		{"nobody", "", ""},
		{"revoked-admin", "", revoked.Secret},
		{"viewer", ferry.RoleViewer, e.tokens[ferry.RoleViewer]},
		{"operator", ferry.RoleOperator, e.tokens[ferry.RoleOperator]},
		{"admin", ferry.RoleAdmin, e.tokens[ferry.RoleAdmin]},
	}
	for _, rt := range e.srv.routes() {
		path := strings.ReplaceAll(rt.path, "{id}", "missing-id")
		var body []byte
		if rt.method == http.MethodPost || rt.method == http.MethodPatch {
			body = []byte("{}")
		}
		publicStatus := 0
		for _, c := range callers {
			t.Run(fmt.Sprintf("%s %s as %s", rt.method, rt.path, c.name), func(t *testing.T) {
				deniedBefore := e.auditCount(ferry.OutcomeDenied)
				status, resp := e.do(rt.method, path, c.token, body)
				denied := status == http.StatusUnauthorized || status == http.StatusForbidden
				switch {
				case rt.role == "":
					// Public: the API token makes no difference.
					if publicStatus == 0 {
						publicStatus = status
					} else if status != publicStatus {
						t.Fatalf("public route answered %d with token, %d without", status, publicStatus)
					}
					return
				case c.role == "":
					if status != http.StatusUnauthorized {
						t.Fatalf("status %d, want 401: %s", status, resp)
					}
				case !c.role.Allows(rt.role):
					if status != http.StatusForbidden {
						t.Fatalf("status %d, want 403: %s", status, resp)
					}
				default:
					if denied {
						t.Fatalf("role %s denied a %s route: %d %s", c.role, rt.role, status, resp)
					}
				}
				if !strings.Contains(string(resp), `"code"`) && status >= 400 {
					t.Fatalf("error body is not a JSON error: %s", resp)
				}
				if denied {
					if got := e.auditCount(ferry.OutcomeDenied); got != deniedBefore+1 {
						t.Fatalf("denied audit events %d -> %d, want one more", deniedBefore, got)
					}
				}
			})
		}
	}
}
