package ferry_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

type goPackage struct {
	ImportPath string
	Name       string
	Doc        string
	Deps       []string
	Imports    []string
	GoFiles    []string
}

func listPackages(t *testing.T) []goPackage {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p goPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

const module = "github.com/ferrymigrate/ferry"

// The dependency graph points inward: the domain imports nothing of ours
// or outside the standard library, and the agent never links the control
// plane, the stores or the replica store.
func TestDependencyDirection(t *testing.T) {
	forbidden := map[string][]string{
		module:            {module + "/", "github.com/", "golang.org/", "modernc.org/"},
		module + "/agent": {module + "/controlplane", module + "/server", module + "/sqlite", module + "/postgres", module + "/replica", module + "/dataplane"},
		module + "/api":   {module + "/controlplane", module + "/server", module + "/sqlite", module + "/postgres"},
		module + "/pki":   {module + "/"},
	}
	for _, p := range listPackages(t) {
		bans, ok := forbidden[p.ImportPath]
		if !ok {
			continue
		}
		for _, d := range p.Deps {
			for _, b := range bans {
				if strings.HasPrefix(d, b) || d == strings.TrimSuffix(b, "/") {
					t.Errorf("%s depends on %s, which it must not", p.ImportPath, d)
				}
			}
		}
	}
}

// Every package says what it is for.
func TestEveryPackageHasDoc(t *testing.T) {
	for _, p := range listPackages(t) {
		if len(p.GoFiles) == 0 {
			continue
		}
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no package doc comment (add a doc.go)", p.ImportPath)
		}
	}
}
