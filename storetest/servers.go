package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

func testServerRoundTrip(t *testing.T, ctx context.Context, s ferry.Store) {
	want := fullServer("srv-1", "machine-1")
	ok(t, "create", s.CreateServer(ctx, want))

	got, err := s.Server(ctx, "srv-1")
	ok(t, "get", err)
	if !got.CreatedAt.Equal(want.CreatedAt) || !got.Replication.LastSnapshotAt.Equal(want.Replication.LastSnapshotAt) {
		t.Fatalf("times changed: got %v, %v", got.CreatedAt, got.Replication.LastSnapshotAt)
	}
	same(t, "Server", got, fullServer("srv-1", "machine-1"))

	byMachine, err := s.ServerByMachineID(ctx, "machine-1")
	ok(t, "get by machine id", err)
	same(t, "ServerByMachineID", byMachine, fullServer("srv-1", "machine-1"))

	// The store keeps neither the object passed in nor the one handed out.
	want.Hostname = "changed-after-create"
	want.Disks[0].ReplicatedBytes = 99
	want.Tags["env"] = "changed"
	got.NICs[0].IPs[0] = "changed"
	got.LaunchSetup.PostLaunchActions[0].Parameters["port"] = "changed"
	again, err := s.Server(ctx, "srv-1")
	ok(t, "get again", err)
	same(t, "Server after callers changed their copies", again, fullServer("srv-1", "machine-1"))

	// A server with nothing but an id round-trips too.
	bare := &ferry.SourceServer{ID: "srv-bare"}
	ok(t, "create bare", s.CreateServer(ctx, bare))
	gotBare, err := s.Server(ctx, "srv-bare")
	ok(t, "get bare", err)
	same(t, "bare server", gotBare, &ferry.SourceServer{ID: "srv-bare"})

	// Update returns what a later read returns.
	upd, err := s.UpdateServer(ctx, "srv-1", func(v *ferry.SourceServer) error {
		v.Tags["new"] = "tag"
		v.AgentCertSerial, v.AgentCertPrevSerial = "ff:ee", ""
		v.UpdatedAt = at(time.Minute)
		return nil
	})
	ok(t, "update", err)
	read, err := s.Server(ctx, "srv-1")
	ok(t, "get after update", err)
	same(t, "UpdateServer result vs Server", upd, read)
	if read.AgentCertSerial != "ff:ee" || read.AgentCertPrevSerial != "" || read.Tags["new"] != "tag" || !read.UpdatedAt.Equal(at(time.Minute)) {
		t.Fatalf("update not stored: %+v", read)
	}

	// An update that leaves the tags alone (a store may skip rewriting
	// them) keeps them filterable; the next one that changes them moves
	// the filter with it.
	_, err = s.UpdateServer(ctx, "srv-1", func(v *ferry.SourceServer) error { v.Hostname = "renamed"; return nil })
	ok(t, "update without tags", err)
	byTag := func(k, v string) int {
		t.Helper()
		list, _, err := s.ListServers(ctx, ferry.ServerFilter{Tags: map[string]string{k: v}})
		ok(t, "list by tag", err)
		return len(list)
	}
	if n := byTag("new", "tag"); n != 1 {
		t.Fatalf("after an update without tags, %d servers listed by their tag, want 1", n)
	}
	_, err = s.UpdateServer(ctx, "srv-1", func(v *ferry.SourceServer) error { v.Tags["new"] = "changed"; return nil })
	ok(t, "update of a tag", err)
	if n, m := byTag("new", "tag"), byTag("new", "changed"); n != 0 || m != 1 {
		t.Fatalf("after a tag changed, %d servers listed by the old value and %d by the new, want 0 and 1", n, m)
	}
}

func testServerNotFound(t *testing.T, ctx context.Context, s ferry.Store) {
	ok(t, "create", s.CreateServer(ctx, server("present")))
	_, err := s.Server(ctx, "missing")
	wantErr(t, "Server", err, ferry.ErrNotFound)
	_, err = s.ServerByMachineID(ctx, "missing")
	wantErr(t, "ServerByMachineID", err, ferry.ErrNotFound)
	_, err = s.ServerByMachineID(ctx, "")
	wantErr(t, "ServerByMachineID of empty machine id", err, ferry.ErrNotFound)
	called := false
	_, err = s.UpdateServer(ctx, "missing", func(*ferry.SourceServer) error { called = true; return nil })
	wantErr(t, "UpdateServer", err, ferry.ErrNotFound)
	if called {
		t.Fatal("UpdateServer called fn for a missing server")
	}
	wantErr(t, "DeleteServer", s.DeleteServer(ctx, "missing"), ferry.ErrNotFound)
}

func testServerConflict(t *testing.T, ctx context.Context, s ferry.Store) {
	a := server("a")
	a.MachineID = "m-a"
	ok(t, "create a", s.CreateServer(ctx, a))

	dupID := server("a")
	dupID.MachineID = "m-other"
	wantErr(t, "duplicate id", s.CreateServer(ctx, dupID), ferry.ErrConflict)
	_, err := s.ServerByMachineID(ctx, "m-other")
	wantErr(t, "machine id of the failed create", err, ferry.ErrNotFound)

	dupMachine := server("b")
	dupMachine.MachineID = "m-a"
	wantErr(t, "duplicate machine id", s.CreateServer(ctx, dupMachine), ferry.ErrConflict)
	_, err = s.Server(ctx, "b")
	wantErr(t, "server of the failed create", err, ferry.ErrNotFound)

	// Servers not yet paired have no machine id; any number may exist.
	ok(t, "create c without machine id", s.CreateServer(ctx, server("c")))
	ok(t, "create d without machine id", s.CreateServer(ctx, server("d")))

	// Taking another server's machine id in an update conflicts and
	// writes nothing.
	_, err = s.UpdateServer(ctx, "c", func(v *ferry.SourceServer) error {
		v.MachineID = "m-a"
		v.Hostname = "should-not-stick"
		return nil
	})
	wantErr(t, "update to a taken machine id", err, ferry.ErrConflict)
	c, err := s.Server(ctx, "c")
	ok(t, "get c", err)
	if c.MachineID != "" || c.Hostname != "h-c" {
		t.Fatalf("failed update wrote %q, %q", c.MachineID, c.Hostname)
	}
	got, err := s.ServerByMachineID(ctx, "m-a")
	ok(t, "get by machine id", err)
	if got.ID != "a" {
		t.Fatalf("machine id m-a is server %s, want a", got.ID)
	}

	// A server may keep its own machine id, and take a free one.
	_, err = s.UpdateServer(ctx, "a", func(v *ferry.SourceServer) error { v.CPUs = 8; return nil })
	ok(t, "update keeping machine id", err)
	_, err = s.UpdateServer(ctx, "c", func(v *ferry.SourceServer) error { v.MachineID = "m-c"; return nil })
	ok(t, "update to a free machine id", err)
	got, err = s.ServerByMachineID(ctx, "m-c")
	ok(t, "get by new machine id", err)
	if got.ID != "c" {
		t.Fatalf("machine id m-c is server %s, want c", got.ID)
	}
}

func testServerUpdate(t *testing.T, ctx context.Context, s ferry.Store) {
	ok(t, "create", s.CreateServer(ctx, fullServer("u", "m-u")))

	boom := errors.New("boom")
	_, err := s.UpdateServer(ctx, "u", func(v *ferry.SourceServer) error {
		if v.Hostname != "host-u" {
			t.Errorf("fn got hostname %q, want the stored one", v.Hostname)
		}
		v.Hostname = "should-not-stick"
		v.Disks[0].ReplicatedBytes = 0
		v.Tags["x"] = "y"
		return fmt.Errorf("wrapped: %w", boom)
	})
	wantErr(t, "callback error", err, boom)
	got, err := s.Server(ctx, "u")
	ok(t, "get", err)
	same(t, "server after a failed update", got, fullServer("u", "m-u"))
	list, _, err := s.ListServers(ctx, ferry.ServerFilter{Tags: map[string]string{"x": ""}})
	ok(t, "list by tag", err)
	if len(list) != 0 {
		t.Fatalf("tag of a failed update is listed")
	}

	_, err = s.UpdateServer(ctx, "u", func(v *ferry.SourceServer) error { v.ID = "other"; return nil })
	if err == nil {
		t.Fatal("update changing the id succeeded")
	}
	_, err = s.Server(ctx, "other")
	wantErr(t, "server under the changed id", err, ferry.ErrNotFound)

	want := fullServer("u", "m-u")
	want.Lifecycle = ferry.LifecycleTesting
	want.Replication.Steps = append(want.Replication.Steps, ferry.InitiationStepState{Step: ferry.StepCreateStagingDisks, Status: ferry.StepSucceeded})
	want.Tags = map[string]string{"only": "this"}
	want.NICs = nil
	want.Archived = true
	upd, err := s.UpdateServer(ctx, "u", func(v *ferry.SourceServer) error {
		v.Lifecycle = ferry.LifecycleTesting
		v.Replication.Steps = append(v.Replication.Steps, ferry.InitiationStepState{Step: ferry.StepCreateStagingDisks, Status: ferry.StepSucceeded})
		v.Tags = map[string]string{"only": "this"}
		v.NICs = nil
		v.Archived = true
		return nil
	})
	ok(t, "update", err)
	same(t, "returned server", upd, want)
	got, err = s.Server(ctx, "u")
	ok(t, "get", err)
	same(t, "stored server", got, want)

	// Indexed fields follow the update.
	for _, tc := range []struct {
		name string
		f    ferry.ServerFilter
		want int
	}{
		{"old tag", ferry.ServerFilter{Archived: true, Tags: map[string]string{"env": ""}}, 0},
		{"new tag", ferry.ServerFilter{Archived: true, Tags: map[string]string{"only": "this"}}, 1},
		{"old lifecycle", ferry.ServerFilter{Archived: true, Lifecycle: []ferry.LifecycleState{ferry.LifecycleReadyForTest}}, 0},
		{"new lifecycle", ferry.ServerFilter{Archived: true, Lifecycle: []ferry.LifecycleState{ferry.LifecycleTesting}}, 1},
		{"live servers", ferry.ServerFilter{}, 0},
	} {
		list, _, err := s.ListServers(ctx, tc.f)
		ok(t, tc.name, err)
		if len(list) != tc.want {
			t.Errorf("%s: listed %d servers, want %d", tc.name, len(list), tc.want)
		}
	}
}

func testServerUpdateConcurrent(t *testing.T, ctx context.Context, s ferry.Store) {
	ok(t, "create", s.CreateServer(ctx, server("c")))
	const workers, rounds = 20, 3
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for range workers {
		wg.Go(func() {
			for range rounds {
				_, err := s.UpdateServer(ctx, "c", func(v *ferry.SourceServer) error {
					v.Disks[0].ReplicatedBytes++
					v.Tags = map[string]string{"n": fmt.Sprint(v.Disks[0].ReplicatedBytes)}
					return nil
				})
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent update: %v", err)
	}
	got, err := s.Server(ctx, "c")
	ok(t, "get", err)
	if n := got.Disks[0].ReplicatedBytes; n != workers*rounds {
		t.Fatalf("after %d concurrent increments the counter is %d: updates were lost", workers*rounds, n)
	}
	if got.Tags["n"] != fmt.Sprint(workers*rounds) {
		t.Fatalf("tags %v, want n=%d", got.Tags, workers*rounds)
	}
}

// testServerUsageCounters adds to the usage counters the way the
// replication server does (a delta inside UpdateServer, about once a
// second, alongside other writers): every delta of a successful update
// counts once, a failed update adds nothing, and a large total is exact.
func testServerUsageCounters(t *testing.T, ctx context.Context, s ferry.Store) {
	srv := server("u")
	srv.Disks = append(srv.Disks, ferry.Disk{Name: "vdb"})
	ok(t, "create", s.CreateServer(ctx, srv))
	const big = int64(1) << 60 // big + 10 has no exact float64: JSON numbers must stay integers
	_, err := s.UpdateServer(ctx, "u", func(v *ferry.SourceServer) error {
		v.Disks[1].SentBytes += big
		return nil
	})
	ok(t, "first update", err)
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			_, err := s.UpdateServer(ctx, "u", func(v *ferry.SourceServer) error {
				v.Disks[0].SentBytes += int64(i + 1)
				v.Disks[1].SentBytes++
				v.Replication.ReplicatingSeconds += 0.5
				return nil
			})
			if err != nil {
				t.Errorf("update %d: %v", i, err)
			}
		})
		wg.Go(func() {
			_, err := s.UpdateServer(ctx, "u", func(v *ferry.SourceServer) error {
				v.Tags = map[string]string{"other": "writer"}
				return nil
			})
			if err != nil {
				t.Errorf("other writer: %v", err)
			}
		})
	}
	wg.Wait()
	boom := errors.New("boom")
	_, err = s.UpdateServer(ctx, "u", func(v *ferry.SourceServer) error {
		v.Disks[0].SentBytes += 1000
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("failed update: %v, want boom", err)
	}
	got, err := s.Server(ctx, "u")
	ok(t, "get", err)
	if got.Disks[0].SentBytes != 55 || got.Disks[1].SentBytes != big+10 || got.SentBytes() != big+65 {
		t.Fatalf("sent bytes %d and %d (total %d), want 55 and %d", got.Disks[0].SentBytes, got.Disks[1].SentBytes, got.SentBytes(), big+10)
	}
	if got.Replication.ReplicatingSeconds != 5 {
		t.Fatalf("replicating seconds %v, want 5", got.Replication.ReplicatingSeconds)
	}
}

func testServerDelete(t *testing.T, ctx context.Context, s ferry.Store) {
	a := server("a")
	a.MachineID = "m"
	a.Tags = map[string]string{"k": "v"}
	ok(t, "create", s.CreateServer(ctx, a))
	ok(t, "create b", s.CreateServer(ctx, server("b")))
	ok(t, "delete", s.DeleteServer(ctx, "a"))
	_, err := s.Server(ctx, "a")
	wantErr(t, "get deleted", err, ferry.ErrNotFound)
	_, err = s.ServerByMachineID(ctx, "m")
	wantErr(t, "get deleted by machine id", err, ferry.ErrNotFound)
	wantErr(t, "delete again", s.DeleteServer(ctx, "a"), ferry.ErrNotFound)
	list, _, err := s.ListServers(ctx, ferry.ServerFilter{Tags: map[string]string{"k": "v"}})
	ok(t, "list by tag", err)
	if len(list) != 0 {
		t.Fatalf("deleted server still listed by tag")
	}
	// The id and the machine id are free again.
	again := server("a")
	again.MachineID = "m"
	ok(t, "create again", s.CreateServer(ctx, again))
	got, err := s.Server(ctx, "b")
	ok(t, "other server survives", err)
	same(t, "server b", got, server("b"))
}

func testServerPagination(t *testing.T, ctx context.Context, s ferry.Store) {
	const n = 23
	var want []string
	for _, i := range perm(n) {
		ok(t, "create", s.CreateServer(ctx, server(fmt.Sprintf("p%02d", i))))
	}
	for i := range n {
		want = append(want, fmt.Sprintf("p%02d", i))
	}
	archived := server("p99-archived")
	archived.Archived = true
	ok(t, "create archived", s.CreateServer(ctx, archived))

	key := func(v *ferry.SourceServer) string { return v.ID }
	for _, size := range pageSizes {
		t.Run(fmt.Sprint("size", size), func(t *testing.T) {
			got := walk(t, size, key, func(after string, limit int) ([]*ferry.SourceServer, string, error) {
				return s.ListServers(ctx, ferry.ServerFilter{After: after, Limit: limit})
			})
			same(t, "ids walked", got, want)
		})
	}

	// Limit 0 means DefaultPageSize; the last page has no cursor.
	page, next, err := s.ListServers(ctx, ferry.ServerFilter{})
	ok(t, "default limit", err)
	if len(page) != n || next != "" {
		t.Fatalf("default limit: %d servers, cursor %q; want %d, no cursor", len(page), next, n)
	}
	// An exactly full last page may or may not carry a cursor, but the
	// page after it is empty.
	page, next, err = s.ListServers(ctx, ferry.ServerFilter{Limit: n})
	ok(t, "limit n", err)
	if len(page) != n {
		t.Fatalf("limit %d: %d servers", n, len(page))
	}
	if next != "" {
		rest, next2, err := s.ListServers(ctx, ferry.ServerFilter{Limit: n, After: next})
		ok(t, "page after the last", err)
		if len(rest) != 0 || next2 != "" {
			t.Fatalf("page after the last: %d servers, cursor %q", len(rest), next2)
		}
	}
	// A cursor stays valid when the server it points after is deleted.
	first, next, err := s.ListServers(ctx, ferry.ServerFilter{Limit: 2})
	ok(t, "first page", err)
	ok(t, "delete", s.DeleteServer(ctx, first[1].ID))
	second, _, err := s.ListServers(ctx, ferry.ServerFilter{Limit: 2, After: next})
	ok(t, "page after a deleted server", err)
	if len(second) != 2 || second[0].ID != want[2] {
		t.Fatalf("page after a deleted server starts at %v, want %s", second, want[2])
	}
	// Filters and cursors combine.
	got := walk(t, 1, key, func(after string, limit int) ([]*ferry.SourceServer, string, error) {
		return s.ListServers(ctx, ferry.ServerFilter{Archived: true, After: after, Limit: limit})
	})
	same(t, "archived walk", got, []string{"p99-archived"})
}

// filterFixture is the set of servers the filter table runs against.
func filterFixture() []*ferry.SourceServer {
	mk := func(id, host string, l ferry.LifecycleState, r ferry.ReplicationState, app, wave string, tags map[string]string, archived bool) *ferry.SourceServer {
		s := server(id)
		s.Hostname, s.Lifecycle, s.Replication.State = host, l, r
		s.ApplicationID, s.WaveID, s.Tags, s.Archived = app, wave, tags, archived
		return s
	}
	return []*ferry.SourceServer{
		mk("s01", "web-01.Example.COM", ferry.LifecycleNotReady, ferry.ReplicationStopped, "a1", "w1", map[string]string{"env": "prod", "tier": "web"}, false),
		mk("s02", "db-01", ferry.LifecycleReadyForTest, ferry.ReplicationContinuous, "a1", "w1", map[string]string{"env": "prod", "tier": "db"}, false),
		mk("s03", "Web-02", ferry.LifecycleTesting, ferry.ReplicationContinuous, "a2", "w2", map[string]string{"env": "dev"}, false),
		mk("s04", "cache", ferry.LifecycleCutover, ferry.ReplicationStopped, "a2", "", map[string]string{"env": "dev", "tier": "web"}, true),
		mk("s05", "WEBHOOK", ferry.LifecycleDisconnected, ferry.ReplicationDisconnected, "", "", nil, false),
		mk("s06", "mail", ferry.LifecycleNotReady, ferry.ReplicationInitialSync, "a1", "w2", map[string]string{"owner": "", "env": "prod"}, false),
	}
}

func testServerFilters(t *testing.T, ctx context.Context, s ferry.Store) {
	for _, srv := range filterFixture() {
		ok(t, "create", s.CreateServer(ctx, srv))
	}
	type L = []ferry.LifecycleState
	type R = []ferry.ReplicationState
	type T = map[string]string
	tests := []struct {
		name string
		f    ferry.ServerFilter
		want []string
	}{
		{"zero filter lists live servers", ferry.ServerFilter{}, []string{"s01", "s02", "s03", "s05", "s06"}},
		{"archived", ferry.ServerFilter{Archived: true}, []string{"s04"}},
		{"lifecycle one", ferry.ServerFilter{Lifecycle: L{ferry.LifecycleNotReady}}, []string{"s01", "s06"}},
		{"lifecycle two", ferry.ServerFilter{Lifecycle: L{ferry.LifecycleTesting, ferry.LifecycleNotReady}}, []string{"s01", "s03", "s06"}},
		{"lifecycle none match", ferry.ServerFilter{Lifecycle: L{ferry.LifecycleStopped}}, nil},
		{"replication one", ferry.ServerFilter{Replication: R{ferry.ReplicationContinuous}}, []string{"s02", "s03"}},
		{"replication two", ferry.ServerFilter{Replication: R{ferry.ReplicationStopped, ferry.ReplicationDisconnected}}, []string{"s01", "s05"}},
		{"application", ferry.ServerFilter{ApplicationID: "a1"}, []string{"s01", "s02", "s06"}},
		{"application unknown", ferry.ServerFilter{ApplicationID: "nope"}, nil},
		{"wave", ferry.ServerFilter{WaveID: "w2"}, []string{"s03", "s06"}},
		{"tag key=value", ferry.ServerFilter{Tags: T{"env": "prod"}}, []string{"s01", "s02", "s06"}},
		{"two tags", ferry.ServerFilter{Tags: T{"env": "prod", "tier": "web"}}, []string{"s01"}},
		{"tag key only", ferry.ServerFilter{Tags: T{"tier": ""}}, []string{"s01", "s02"}},
		{"tag key only, empty value stored", ferry.ServerFilter{Tags: T{"owner": ""}}, []string{"s06"}},
		{"tag key only and key=value", ferry.ServerFilter{Tags: T{"tier": "", "env": "prod"}}, []string{"s01", "s02"}},
		{"tag value mismatch", ferry.ServerFilter{Tags: T{"env": "staging"}}, nil},
		{"tag value is not a key", ferry.ServerFilter{Tags: T{"prod": ""}}, nil},
		{"text hostname lower", ferry.ServerFilter{Text: "web"}, []string{"s01", "s03", "s05"}},
		{"text hostname mixed case", ferry.ServerFilter{Text: "eXAMPLE.com"}, []string{"s01"}},
		{"text id upper", ferry.ServerFilter{Text: "S0"}, []string{"s01", "s02", "s03", "s05", "s06"}},
		{"text id exact", ferry.ServerFilter{Text: "s06"}, []string{"s06"}},
		{"text like metacharacters are literal", ferry.ServerFilter{Text: "%"}, nil},
		{"text underscore is literal", ferry.ServerFilter{Text: "_"}, nil},
		{"text no match", ferry.ServerFilter{Text: "zzz"}, nil},
		{"lifecycle+application+tag", ferry.ServerFilter{Lifecycle: L{ferry.LifecycleNotReady}, ApplicationID: "a1", Tags: T{"env": "prod"}}, []string{"s01", "s06"}},
		{"text+replication", ferry.ServerFilter{Text: "WEB", Replication: R{ferry.ReplicationContinuous}}, []string{"s03"}},
		{"archived+tag", ferry.ServerFilter{Archived: true, Tags: T{"tier": "web"}}, []string{"s04"}},
		{"archived+application", ferry.ServerFilter{Archived: true, ApplicationID: "a2"}, []string{"s04"}},
		{"archived+lifecycle", ferry.ServerFilter{Archived: true, Lifecycle: L{ferry.LifecycleNotReady}}, nil},
		{"wave+application", ferry.ServerFilter{WaveID: "w1", ApplicationID: "a2"}, nil},
		{"wave+application match", ferry.ServerFilter{WaveID: "w2", ApplicationID: "a1"}, []string{"s06"}},
		{"everything", ferry.ServerFilter{Lifecycle: L{ferry.LifecycleReadyForTest}, Replication: R{ferry.ReplicationContinuous},
			ApplicationID: "a1", WaveID: "w1", Tags: T{"tier": "db", "env": ""}, Text: "DB-0"}, []string{"s02"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, size := range []int{0, 1} {
				f := tc.f
				got := walk(t, ferry.PageLimit(size), func(v *ferry.SourceServer) string { return v.ID },
					func(after string, limit int) ([]*ferry.SourceServer, string, error) {
						f.After, f.Limit = after, limit
						return s.ListServers(ctx, f)
					})
				if !slices.Equal(got, tc.want) {
					t.Fatalf("page size %d: got %v, want %v", ferry.PageLimit(size), got, tc.want)
				}
			}
		})
	}
}
