package controlplane

import (
	"sort"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/api"
	"gopkg.in/yaml.v3"
)

// The OpenAPI document and the served routes must name the same
// operations, with the same least role.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatalf("parse openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q, want 3.x", doc.OpenAPI)
	}
	documented := map[string]string{}
	for path, ops := range doc.Paths {
		for method, op := range ops {
			if method == "parameters" {
				continue
			}
			m, ok := op.(map[string]any)
			if !ok {
				t.Errorf("%s %s: operation is not a mapping", method, path)
				continue
			}
			role, _ := m["x-ferry-role"].(string)
			documented[strings.ToUpper(method)+" "+path] = role
		}
	}
	served := map[string]string{}
	for _, rt := range (&Server{}).routes() {
		role := string(rt.role)
		if role == "" {
			role = "public"
		}
		served[rt.method+" "+rt.path] = role
	}
	var missing, extra, wrongRole []string
	for k, role := range served {
		d, ok := documented[k]
		switch {
		case !ok:
			missing = append(missing, k)
		case d != role:
			wrongRole = append(wrongRole, k+": served "+role+", documented "+d)
		}
	}
	for k := range documented {
		if _, ok := served[k]; !ok {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	sort.Strings(wrongRole)
	if len(missing) > 0 {
		t.Errorf("served routes missing from openapi.yaml:\n  %s", strings.Join(missing, "\n  "))
	}
	if len(extra) > 0 {
		t.Errorf("openapi.yaml names routes that are not served:\n  %s", strings.Join(extra, "\n  "))
	}
	if len(wrongRole) > 0 {
		t.Errorf("x-ferry-role differs from the served role:\n  %s", strings.Join(wrongRole, "\n  "))
	}
}
