package controlplane

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// postCSV sends a CSV import and returns status and body.
func (e *env) postCSV(path, token string, body []byte) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest("POST", e.http.URL+APIPrefix+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/csv")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes()
}

func TestImportAllOrNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.addServer("s-1", ferry.LifecycleNotReady)
	e.addServer("s-2", ferry.LifecycleNotReady)
	e.addServer("s-3", ferry.LifecycleNotReady)
	op := e.tokens[ferry.RoleOperator]

	bad := "hostname,application,wave,tags,cpus,memory_mib,boot_mode\n" +
		"host-s-1,billing,wave-1,env=prod;tier=web,2,2048,UEFI\n" +
		"host-s-2,billing,wave-1,broken,0,2048,\n" +
		"host-nope,crm,,,,,\n" +
		"host-s-1,crm,,,,,FLOPPY\n"
	status, body := e.postCSV("/import", op, []byte(bad))
	if status != http.StatusBadRequest {
		t.Fatalf("bad import: status %d: %s", status, body)
	}
	var ae api.Error
	if err := json.Unmarshal(body, &ae); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, fe := range ae.Errors {
		got[fe.String()[:strings.Index(fe.String(), ":")]] = true
	}
	for _, w := range []string{"row 3, column tags", "row 3, column cpus", "row 5, column boot_mode", "row 5, column hostname"} {
		if !got[w] {
			t.Errorf("no error at %s; got %v", w, ae.Errors)
		}
	}
	if !strings.Contains(ae.Message, "nothing was changed") {
		t.Errorf("message %q does not say nothing changed", ae.Message)
	}
	// Cell-level errors stop before the inventory is consulted; a second
	// file whose only problem is an unknown host checks the inventory.
	status, body = e.postCSV("/import", op, []byte("hostname,application\nhost-s-1,billing\nhost-nope,crm\n"))
	if status != http.StatusBadRequest || !strings.Contains(string(body), "no live server has hostname host-nope") {
		t.Fatalf("unknown host: %d %s", status, body)
	}
	apps, _, _ := e.store.ListApplications(ctx, ferry.GroupFilter{})
	if len(apps) != 0 {
		t.Fatalf("a failed import created applications: %v", apps)
	}
	if s, _ := e.store.Server(ctx, "s-1"); s.ApplicationID != "" || len(s.Tags) != 0 {
		t.Fatalf("a failed import changed s-1: %+v", s)
	}

	good := "\xEF\xBB\xBFHostname,source_server_id,application,wave,tags,cpus,memory_mib,target,bandwidth_bytes_per_sec,lifecycle_state\n" +
		"host-s-1,,billing,wave-1,env=prod;tier=web,2,2048,qemu,1000000,NOT_READY\n" +
		",s-2,billing,wave-1,,,,,,\n" +
		"host-s-3,,crm,,,,,,,\n"
	// A dry run checks and counts but changes nothing.
	status, body = e.postCSV("/import?dry_run=true", op, []byte(good))
	var task api.ImportTask
	if status != 200 || json.Unmarshal(body, &task) != nil || task.Status != api.ImportValidated || task.CreatedApplications != 2 {
		t.Fatalf("dry run: %d %s", status, body)
	}
	if apps, _, _ := e.store.ListApplications(ctx, ferry.GroupFilter{}); len(apps) != 0 {
		t.Fatal("dry run created applications")
	}
	status, body = e.postCSV("/import", op, []byte(good))
	if status != 200 {
		t.Fatalf("good import: %d %s", status, body)
	}
	task = api.ImportTask{}
	if err := json.Unmarshal(body, &task); err != nil {
		t.Fatal(err)
	}
	if task.Status != api.ImportSucceeded || task.Rows != 3 || task.CreatedApplications != 2 || task.CreatedWaves != 1 || task.ModifiedServers != 3 || len(task.IgnoredColumns) != 1 {
		t.Fatalf("task %+v", task)
	}
	s1, _ := e.store.Server(ctx, "s-1")
	if s1.Tags["tier"] != "web" || s1.LaunchSetup.CPUs != 2 || s1.LaunchSetup.MemoryMiB != 2048 || s1.ReplicationSetup.BandwidthBytesPerSec != 1000000 || s1.ApplicationID == "" || s1.WaveID == "" {
		t.Fatalf("s-1 after import: %+v", s1)
	}
	billing, _ := e.store.Application(ctx, s1.ApplicationID)
	if billing.Name != "billing" || billing.WaveID != s1.WaveID {
		t.Fatalf("billing %+v, want it in the wave of its rows", billing)
	}
	// Importing the same file again changes nothing.
	status, body = e.postCSV("/import", op, []byte(good))
	task = api.ImportTask{}
	if status != 200 || json.Unmarshal(body, &task) != nil || task.ModifiedServers != 0 || task.UnchangedServers != 3 || task.CreatedApplications != 0 {
		t.Fatalf("re-import: %d %s", status, body)
	}

	// Export, then import the export back: nothing changes.
	var list api.List[api.ImportTask]
	if err := e.client(ferry.RoleViewer).Do(ctx, "GET", "/imports", nil, nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 5 || list.Items[0].ID != task.ID || list.Items[len(list.Items)-1].Status != api.ImportFailed {
		t.Fatalf("import history %+v", list.Items)
	}
	status, exported := e.do("GET", "/export", e.tokens[ferry.RoleViewer], nil)
	if status != 200 {
		t.Fatalf("export: %d %s", status, exported)
	}
	recs, err := csv.NewReader(bytes.NewReader(exported)).ReadAll()
	if err != nil || len(recs) != 4 || recs[1][0] != "s-1" || recs[1][2] != "billing" || recs[1][3] != "wave-1" || recs[1][4] != "env=prod;tier=web" {
		t.Fatalf("export: %v %q", err, recs)
	}
	status, body = e.postCSV("/import", op, exported)
	task = api.ImportTask{}
	if status != 200 || json.Unmarshal(body, &task) != nil || task.ModifiedServers != 0 || task.UnchangedServers != 3 {
		t.Fatalf("import of export: %d %s", status, body)
	}
	// Every import is audited with its counts.
	audit, _, err := e.store.ListAudit(ctx, ferry.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range audit {
		if a.Action == "inventory.import" {
			n++
			if !strings.Contains(a.Detail, "import-") {
				t.Errorf("audit detail %q", a.Detail)
			}
		}
	}
	if n != 6 {
		t.Errorf("%d import audit events, want 6", n)
	}
}

func TestImportBadFiles(t *testing.T) {
	e := newEnv(t)
	e.addServer("s-1", ferry.LifecycleNotReady)
	dup := e.addServer("s-dup1", ferry.LifecycleNotReady)
	if _, err := e.store.UpdateServer(context.Background(), "s-1", func(s *ferry.SourceServer) error { s.Hostname = dup.Hostname; return nil }); err != nil {
		t.Fatal(err)
	}
	op := e.tokens[ferry.RoleOperator]
	tests := []struct {
		name, body, contains string
		status               int
	}{
		{"empty", "", "file is empty", 400},
		{"header only", "hostname\n", "no rows", 400},
		{"unknown column", "hostname,colour\nh,red\n", "column colour: unknown column", 400},
		{"duplicate column", "hostname,hostname\nh,h\n", "appears twice", 400},
		{"no key column", "application\nbilling\n", "no source_server_id or hostname column", 400},
		{"latin-1", "hostname,application\nh,caf\xe9\n", "line 2 is not valid UTF-8", 400},
		{"utf-16", "\xff\xfeh\x00", "UTF-16", 400},
		{"utf-16 big endian", "\xfe\xff\x00h\x00o", "UTF-16", 400},
		{"utf-16 without a BOM", "h\x00o\x00s\x00t\x00", "NUL bytes", 400},
		{"bad rows", "hostname,cpus,boot_mode\nhost-s-1,zero,\n,2,\nhost-s-dup1,2,FLOPPY\n", "row 2, column cpus", 400},
		{"duplicate hostname in file", "hostname\nh1\nH1\n", "row 3, column hostname: hostname H1 is also on row 2", 400},
		{"ambiguous hostname", "hostname,application\n" + dup.Hostname + ",x\n", "use source_server_id", 400},
		{"id and hostname disagree", "source_server_id,hostname\ns-1,other\n", "row 2, column hostname", 400},
		{"short row", "hostname,application\nh\n", "row 2: has 1 cells, the header has 2", 400},
		{"bad quote", "hostname\n\"h\n", "row 2", 400},
		{"neither key", "hostname,application\n,x\n", "neither source_server_id nor hostname", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := e.store.Server(context.Background(), "s-1")
			status, body := e.postCSV("/import", op, []byte(tt.body))
			if status != tt.status || !strings.Contains(string(body), tt.contains) {
				t.Fatalf("status %d, body %s; want %d containing %q", status, body, tt.status, tt.contains)
			}
			if after, _ := e.store.Server(context.Background(), "s-1"); mustJSONString(t, before) != mustJSONString(t, after) {
				t.Fatal("a refused import changed a server")
			}
		})
	}
	t.Run("json content type", func(t *testing.T) {
		status, body := e.do("POST", "/import", op, []byte(`{}`))
		if status != http.StatusUnsupportedMediaType {
			t.Fatalf("%d %s", status, body)
		}
	})
	t.Run("viewer", func(t *testing.T) {
		status, _ := e.postCSV("/import", e.tokens[ferry.RoleViewer], []byte("hostname\nh\n"))
		if status != http.StatusForbidden {
			t.Fatalf("viewer import: %d", status)
		}
	})
}

func TestCellEscaping(t *testing.T) {
	for _, v := range []string{"", "plain", "=cmd()", "+1", "-x", "@SUM", "'quoted", "'=x"} {
		if got := unescapeCell(escapeCell(v)); got != v {
			t.Errorf("round trip %q -> %q -> %q", v, escapeCell(v), got)
		}
		if e := escapeCell(v); e != "" && strings.ContainsRune("=+-@", rune(e[0])) {
			t.Errorf("escapeCell(%q) = %q still starts a formula", v, e)
		}
	}
}

// FuzzParseImportCSV checks the parser never panics, reports every
// problem with a message, and that what it accepts is well-formed.
func FuzzParseImportCSV(f *testing.F) {
	f.Add([]byte("hostname,application,wave,tags\nweb-1,billing,w1,env=prod;tier=web\n"))
	f.Add([]byte("source_server_id,cpus,memory_mib,boot_mode\ns-1,2,2048,uefi\n"))
	f.Add([]byte("hostname\n\"a\nb\",\n"))
	f.Add([]byte("\xEF\xBB\xBFhostname,lifecycle_state\n'=x,NOT_READY\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, errs := parseImportCSV(data)
		if errs.count < len(errs.items) || len(errs.items) > api.MaxImportErrors {
			t.Fatalf("error count %d, items %d", errs.count, len(errs.items))
		}
		for _, e := range errs.items {
			if e.Message == "" {
				t.Fatalf("error without a message: %+v", e)
			}
		}
		if errs.count > 0 {
			return
		}
		for _, r := range file.rows {
			if r.serverID == "" && r.hostname == "" {
				t.Fatalf("accepted row %d with no server key", r.row)
			}
			if r.cpus != nil && (*r.cpus < 1 || *r.cpus > 256) {
				t.Fatalf("accepted cpus %d", *r.cpus)
			}
			if r.tags != nil && checkTags(r.tags) != nil {
				t.Fatalf("accepted bad tags %v", r.tags)
			}
		}
	})
}
