package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/sqlite"
	"github.com/ferrymigrate/ferry/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) ferry.Store {
		s, err := sqlite.Open(filepath.Join(t.TempDir(), "ferry.db"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry.db")
	s, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.CreateWave(ctx, &ferry.Wave{ID: "w", Name: "kept"}); err != nil {
		t.Fatal(err)
	}
	// The usage counters the replication server adds to survive a restart.
	if err := s.CreateServer(ctx, &ferry.SourceServer{ID: "s", Disks: []ferry.Disk{{Name: "vda", SentBytes: 7 << 30}},
		Replication: ferry.ReplicationInfo{ReplicatingSeconds: 3 * 86400}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		s, err = sqlite.Open(path)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		w, err := s.Wave(ctx, "w")
		if err != nil || w.Name != "kept" {
			t.Fatalf("after reopen: %v, %v", w, err)
		}
		srv, err := s.Server(ctx, "s")
		if err != nil || srv.SentBytes() != 7<<30 || srv.Replication.ReplicatingSeconds != 3*86400 {
			t.Fatalf("usage counters after reopen: %+v, %v", srv, err)
		}
		s.Close()
	}
	db := rawDB(t, path)
	var n, maxV int
	if err := db.QueryRow(`SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &maxV); err != nil {
		t.Fatal(err)
	}
	if n != sqlite.SchemaVersion() || maxV != sqlite.SchemaVersion() {
		t.Fatalf("schema_migrations has %d rows up to %d, want %d", n, maxV, sqlite.SchemaVersion())
	}
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode %q, %v; want wal", mode, err)
	}
}

func TestNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry.db")
	s, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db := rawDB(t, path)
	if _, err := db.Exec(`INSERT INTO schema_migrations (version) VALUES (?)`, sqlite.SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = sqlite.Open(path)
	if err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("open of a newer schema: %v, want an error saying it is newer", err)
	}
}

func TestOpenBadPath(t *testing.T) {
	for _, p := range []string{"", "a?b", filepath.Join(t.TempDir(), "missing-dir", "x.db")} {
		if s, err := sqlite.Open(p); err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}

func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
