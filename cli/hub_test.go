package cli

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/controlplane"
	"github.com/ferrymigrate/ferry/server"
)

// hubServer starts a real `ferry server --dev` in this process with two
// servers in it and points the CLI at it with an operator token.
func hubServer(t *testing.T) ferry.Store {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	srv, err := server.Start(ctx, config.Server{Dev: true, DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0", DataListen: "127.0.0.1:0"},
		slog.New(slog.NewTextHandler(io.Discard, nil)), io.Discard)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	st := srv.Store()
	now := time.Now().UTC()
	op, err := controlplane.CreateToken(ctx, st, "cli-operator", ferry.RoleOperator, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*ferry.SourceServer{
		{ID: "s-web", Hostname: "web-1", Lifecycle: ferry.LifecycleNotReady, Replication: ferry.ReplicationInfo{State: ferry.ReplicationInitialSync},
			Disks: []ferry.Disk{{Name: "vda", SizeBytes: 40 << 30, ReplicatedBytes: 10 << 30, SentBytes: 3 << 30}}},
		{ID: "s-db", Hostname: "db-1", Lifecycle: ferry.LifecycleReadyForTest, Replication: ferry.ReplicationInfo{State: ferry.ReplicationContinuous, ReplicatingSeconds: 2 * 86400},
			Disks: []ferry.Disk{{Name: "sda", SizeBytes: 20 << 30, ReplicatedBytes: 20 << 30}}},
	} {
		s.MachineID = "m-" + s.ID
		s.ReplicationSetup, s.LaunchSetup = ferry.DefaultReplicationSettings(), ferry.DefaultLaunchSettings()
		s.CreatedAt, s.UpdatedAt = now, now
		if err := st.CreateServer(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("FERRY_CONFIG", filepath.Join(dir, "cli.json"))
	t.Setenv("FERRY_ADDR", "https://"+srv.APIAddr)
	t.Setenv("FERRY_TOKEN", op.Secret)
	t.Setenv("FERRY_CA_FINGERPRINT", srv.CAFingerprint())
	return st
}

// TestHubVerbs drives the Migration Hub verbs against a real server:
// waves and applications, an import with bad rows (every problem listed,
// nothing changed), a good import, the export, the usage report, a wave's
// bulk test launch, and `jobs wait` with its progress, all with output
// that is not a terminal (plain lines, no control characters).
func TestHubVerbs(t *testing.T) {
	st := hubServer(t)
	ctx := t.Context()
	dir := t.TempDir()
	var out bytes.Buffer
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\noutput:\n%s", what, err, out.String())
		}
	}

	// Waves and applications.
	must("create wave", RunGroupsCreate(ctx, KindWaves, GroupCreateOptions{Name: "wave 1", Output: FormatJSON}, &out))
	var w groupStatus
	must("decode wave", json.Unmarshal(out.Bytes(), &w))
	out.Reset()
	must("create application", RunGroupsCreate(ctx, KindApplications, GroupCreateOptions{Name: "billing", Wave: w.ID, Output: FormatTable}, &out))
	if !strings.HasPrefix(out.String(), "Created application ") {
		t.Fatalf("create application: %q", out.String())
	}
	out.Reset()
	if err := RunGroupsCreate(ctx, KindWaves, GroupCreateOptions{Name: "wave 1", Output: FormatTable}, &out); err == nil || !strings.Contains(err.Error(), "wave 1") {
		t.Fatalf("duplicate wave name: %v", err)
	}

	// An import with bad rows: every problem by row and column, nothing
	// changed.
	bad := filepath.Join(dir, "bad.csv")
	must("write bad.csv", os.WriteFile(bad, []byte("hostname,application,wave,cpus,boot_mode\nweb-1,billing,wave 1,many,\nnope-1,billing,,,FLOPPY\ndb-1,billing,,2,\n"), 0o600))
	var progress bytes.Buffer
	out.Reset()
	err := RunImport(ctx, ImportOptions{File: bad, Output: FormatTable, Progress: &progress}, &out)
	if err == nil || !strings.Contains(err.Error(), "nothing was imported") {
		t.Fatalf("bad import: %v", err)
	}
	for _, want := range []string{"ROW", "2    cpus", "3    boot_mode"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("bad import output lacks %q:\n%s", want, out.String())
		}
	}
	if p := progress.String(); !strings.HasPrefix(p, "uploading bad.csv (") || !strings.HasSuffix(p, " 100%\nthe server checks every row of bad.csv…\n") ||
		strings.Count(p, "100%") != 1 || strings.ContainsAny(p, "\r\x1b") {
		t.Errorf("import progress on a non-terminal:\n%q", p)
	}
	if s, _ := st.Server(ctx, "s-db"); s.ApplicationID != "" {
		t.Fatalf("a refused import changed db-1: application %q", s.ApplicationID)
	}

	// A good import, dry run first.
	good := filepath.Join(dir, "good.csv")
	must("write good.csv", os.WriteFile(good, []byte("hostname,application,wave,tags\nweb-1,billing,wave 1,env=prod\ndb-1,billing,wave 1,env=prod;tier=db\n"), 0o600))
	out.Reset()
	must("dry run", RunImport(ctx, ImportOptions{File: good, DryRun: true, Output: FormatTable}, &out))
	if s, _ := st.Server(ctx, "s-db"); s.ApplicationID != "" || !strings.Contains(out.String(), "dry run") {
		t.Fatalf("dry run changed db-1 (%q) or said %q", s.ApplicationID, out.String())
	}
	out.Reset()
	must("import", RunImport(ctx, ImportOptions{File: good, Output: FormatTable}, &out))
	if s, _ := st.Server(ctx, "s-db"); s.ApplicationID == "" || s.Tags["tier"] != "db" {
		t.Fatalf("import did not apply: %+v", s)
	}

	// The export: the CSV on stdout, a summary on the progress writer.
	out.Reset()
	progress.Reset()
	must("export", RunExport(ctx, InventoryExportOptions{Progress: &progress}, &out))
	rows, err := csv.NewReader(strings.NewReader(out.String())).ReadAll()
	if err != nil || len(rows) != 3 || rows[0][0] != "source_server_id" {
		t.Fatalf("export: %v\n%s", err, out.String())
	}
	if p := progress.String(); !strings.HasPrefix(p, "exported 2 servers (") || strings.ContainsAny(p, "\r\x1b") {
		t.Errorf("export progress: %q", p)
	}

	// Groups with their health and members.
	out.Reset()
	must("list applications", RunGroupsList(ctx, KindApplications, FormatTable, &out))
	if !strings.Contains(out.String(), "billing") || !strings.Contains(out.String(), w.ID) {
		t.Errorf("applications:\n%s", out.String())
	}
	out.Reset()
	must("show wave", RunGroupsShow(ctx, KindWaves, w.ID, FormatYAML, &out))
	if !strings.Contains(out.String(), "server_count: 2") {
		t.Errorf("wave yaml:\n%s", out.String())
	}

	// The usage report: figures from the store.
	out.Reset()
	must("usage csv", RunUsage(ctx, UsageOptions{Output: "csv"}, &out))
	if !strings.Contains(out.String(), "s-web,web-1,42949672960,0,0,0,0.00,3221225472") || !strings.Contains(out.String(), "s-db,db-1,21474836480,0,0,0,2.00,0") {
		t.Errorf("usage csv:\n%s", out.String())
	}

	// A bulk test launch of the wave: web-1 is not ready, db-1 gets a job.
	out.Reset()
	must("wave test", RunGroupsLaunch(ctx, KindWaves, w.ID, GroupLaunchOptions{Kind: "test", Output: FormatTable}, &out))
	if !strings.Contains(out.String(), "s-web") || !strings.Contains(out.String(), "not started") || !strings.Contains(out.String(), "Started 1 job") {
		t.Fatalf("wave test:\n%s", out.String())
	}
	jobs, _, err := st.ListJobs(ctx, ferry.JobFilter{})
	if err != nil || len(jobs) != 1 {
		t.Fatalf("jobs: %v %v", jobs, err)
	}
	// db-1 has no replica in this server, so its launch fails at the
	// snapshot: `jobs wait` follows the log with a plain progress line
	// and fails naming the server.
	out.Reset()
	err = RunJobsWait(ctx, jobs[0].ID, FormatTable, &out)
	if err == nil || !strings.Contains(err.Error(), "failed for s-db") {
		t.Fatalf("jobs wait: %v\n%s", err, out.String())
	}
	o := out.String()
	for _, want := range []string{"JOB_START", "SNAPSHOT_FAIL", "JOB_END", "job " + jobs[0].ID + " COMPLETED: 1/1 servers done 100%\n"} {
		if !strings.Contains(o, want) {
			t.Errorf("jobs wait output lacks %q:\n%s", want, o)
		}
	}
	if strings.ContainsAny(o, "\r\x1b") {
		t.Errorf("control characters in jobs wait output to a non-terminal: %q", o)
	}

	// One plain frame of the watch.
	out.Reset()
	must("watch", RunServersWatch(ctx, WatchOptions{Times: 1}, &out))
	if !strings.Contains(out.String(), "replicated 30.0 GiB of 60.0 GiB  [##########..........]  50%") || strings.ContainsRune(out.String(), '\x1b') {
		t.Errorf("watch frame:\n%s", out.String())
	}
}

// TestServerDelete deletes a disconnected server through the real API
// once confirmed, and refuses without --yes or for a server that still
// replicates.
func TestServerDelete(t *testing.T) {
	st := hubServer(t)
	ctx := t.Context()
	admin, err := controlplane.CreateToken(ctx, st, "cli-admin", ferry.RoleAdmin, time.Now().UTC(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FERRY_TOKEN", admin.Secret)
	if _, err := st.UpdateServer(ctx, "s-web", func(s *ferry.SourceServer) error {
		s.Lifecycle = ferry.LifecycleDisconnected
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := RunServerDelete(ctx, "s-web", false, &out); !errors.Is(err, ErrNotConfirmed) || !strings.Contains(err.Error(), "--yes") {
		t.Fatalf("delete without --yes: %v", err)
	}
	if _, err := st.Server(ctx, "s-web"); err != nil {
		t.Fatalf("an unconfirmed delete deleted: %v", err)
	}
	if err := RunServerDelete(ctx, "s-db", true, &out); err == nil || !strings.Contains(err.Error(), "disconnect or archive it") {
		t.Fatalf("delete of a replicating server: %v", err)
	}
	if err := RunServerDelete(ctx, "s-web", true, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "Deleted server s-web") {
		t.Fatalf("output %q", out.String())
	}
	if _, err := st.Server(ctx, "s-web"); !errors.Is(err, ferry.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

// TestSnapshotsListOnline lists a server's snapshots through the running
// server's API: a server with none gives an empty table or JSON list.
func TestSnapshotsListOnline(t *testing.T) {
	hubServer(t)
	ctx := t.Context()
	var out bytes.Buffer
	if err := RunSnapshotsListOnline(ctx, "s-web", "", FormatJSON, &out); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out.String()) != "[]" {
		t.Fatalf("JSON for a server without snapshots: %q", out.String())
	}
	out.Reset()
	if err := RunSnapshotsListOnline(ctx, "s-web", "", FormatTable, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "DISK") {
		t.Fatalf("table: %q", out.String())
	}
	if err := RunSnapshotsListOnline(ctx, "s-web", "", "xml", &out); err == nil {
		t.Fatal("an unknown output format was accepted")
	}
}
