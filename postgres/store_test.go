package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/postgres"
	"github.com/ferrymigrate/ferry/storetest"
	"github.com/jackc/pgx/v5"
)

// testURL returns the database the tests may use, from
// FERRY_TEST_POSTGRES_URL. Without it the tests skip, loudly, or fail when
// FERRY_TEST_REQUIRE_ALL=1 (as CI sets it).
func testURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("FERRY_TEST_POSTGRES_URL")
	if u != "" {
		return u
	}
	const msg = "\n\n*** PostgreSQL conformance suite SKIPPED: set FERRY_TEST_POSTGRES_URL " +
		"(scripts/postgres-test.sh starts a local server and prints the line to export) ***\n"
	if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
		t.Fatal(msg + "FERRY_TEST_REQUIRE_ALL=1: a skipped integration test is a failure")
	}
	t.Skip(msg)
	return ""
}

// freshSchema creates an empty schema with a random name, dropped when
// the test ends, and returns a URL whose connections use it.
func freshSchema(t *testing.T, base string) string {
	t.Helper()
	ctx := context.Background()
	b := make([]byte, 8)
	rand.Read(b)
	schema := "ferry_test_" + hex.EncodeToString(b)
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to FERRY_TEST_POSTGRES_URL: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return withSearchPath(t, base, schema)
}

func withSearchPath(t *testing.T, base, schema string) string {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("FERRY_TEST_POSTGRES_URL must be a postgres:// URL")
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func open(t *testing.T, u string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	base := testURL(t)
	storetest.Run(t, func(t *testing.T) ferry.Store {
		return open(t, freshSchema(t, base))
	})
}

func TestReopen(t *testing.T) {
	u := freshSchema(t, testURL(t))
	ctx := context.Background()
	s := open(t, u)
	if err := s.CreateWave(ctx, &ferry.Wave{ID: "w", Name: "kept"}); err != nil {
		t.Fatal(err)
	}
	// The usage counters the replication server adds to survive a restart.
	if err := s.CreateServer(ctx, &ferry.SourceServer{ID: "s", Disks: []ferry.Disk{{Name: "vda", SentBytes: 7 << 30}},
		Replication: ferry.ReplicationInfo{ReplicatingSeconds: 3 * 86400}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for range 2 {
		s = open(t, u)
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
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n, maxV int
	if err := conn.QueryRow(ctx, `SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &maxV); err != nil {
		t.Fatal(err)
	}
	if n != postgres.SchemaVersion() || maxV != postgres.SchemaVersion() {
		t.Fatalf("schema_migrations has %d rows up to %d, want %d", n, maxV, postgres.SchemaVersion())
	}
	// Newer than known: a clear error, nothing changed.
	if _, err := conn.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, postgres.SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	if s, err := postgres.Open(ctx, u); err == nil || !strings.Contains(err.Error(), "newer") {
		if s != nil {
			s.Close()
		}
		t.Fatalf("open of a newer schema: %v, want an error saying it is newer", err)
	}
}

func TestOpenConcurrentMigrations(t *testing.T) {
	u := freshSchema(t, testURL(t))
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			s, err := postgres.Open(context.Background(), u)
			if err == nil {
				s.Close()
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent open: %v", err)
		}
	}
}

func TestOpenBadURL(t *testing.T) {
	_, err := postgres.Open(context.Background(), "postgres://u:secret@[::1")
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("bad URL: %v; want an error that does not show the password", err)
	}
}
