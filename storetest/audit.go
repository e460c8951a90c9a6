package storetest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

func testAudit(t *testing.T, ctx context.Context, s ferry.Store) {
	var all []ferry.AuditEvent
	var last int64
	for i := range 15 {
		e := ferry.AuditEvent{
			Time:     at(time.Duration(i) * time.Minute),
			Actor:    []string{"alice", "bob", "token:ci"}[i%3],
			Action:   "POST /api/v1/servers",
			Target:   fmt.Sprintf("server/s%d", i),
			SourceIP: "192.0.2.1",
			Outcome:  []string{ferry.OutcomeSuccess, ferry.OutcomeDenied}[i%2],
			Detail:   "detail",
			ID:       12345, // ignored: the store sets it
		}
		ok(t, "append", s.AppendAudit(ctx, &e))
		if e.ID <= last {
			t.Fatalf("event %d: ID %d, not above the previous %d", i, e.ID, last)
		}
		last = e.ID
		all = append(all, e)
	}
	newestFirst := func(keep func(ferry.AuditEvent) bool) []ferry.AuditEvent {
		var out []ferry.AuditEvent
		for _, e := range slices.Backward(all) {
			if keep(e) {
				out = append(out, e)
			}
		}
		return out
	}
	since := at(9 * time.Minute)
	tests := []struct {
		name string
		f    ferry.AuditFilter
		want []ferry.AuditEvent
	}{
		{"all", ferry.AuditFilter{}, newestFirst(func(ferry.AuditEvent) bool { return true })},
		{"actor", ferry.AuditFilter{Actor: "bob"}, newestFirst(func(e ferry.AuditEvent) bool { return e.Actor == "bob" })},
		{"outcome", ferry.AuditFilter{Outcome: ferry.OutcomeDenied}, newestFirst(func(e ferry.AuditEvent) bool { return e.Outcome == ferry.OutcomeDenied })},
		{"since (inclusive)", ferry.AuditFilter{Since: since}, newestFirst(func(e ferry.AuditEvent) bool { return !e.Time.Before(since) })},
		{"since in another zone", ferry.AuditFilter{Since: since.UTC()}, newestFirst(func(e ferry.AuditEvent) bool { return !e.Time.Before(since) })},
		{"actor+outcome+since", ferry.AuditFilter{Actor: "alice", Outcome: ferry.OutcomeSuccess, Since: at(time.Minute)},
			newestFirst(func(e ferry.AuditEvent) bool {
				return e.Actor == "alice" && e.Outcome == ferry.OutcomeSuccess && !e.Time.Before(at(time.Minute))
			})},
		{"nobody", ferry.AuditFilter{Actor: "mallory"}, nil},
	}
	for _, tc := range tests {
		for _, size := range pageSizes {
			f := tc.f
			var got []ferry.AuditEvent
			walk(t, size, func(e ferry.AuditEvent) string { got = append(got, e); return fmt.Sprint(e.ID) },
				func(after string, limit int) ([]ferry.AuditEvent, string, error) {
					f.After, f.Limit = after, limit
					return s.ListAudit(ctx, f)
				})
			if len(got) != len(tc.want) {
				t.Errorf("%s, page size %d: %d events, want %d", tc.name, size, len(got), len(tc.want))
				continue
			}
			same(t, fmt.Sprintf("%s, page size %d", tc.name, size), got, tc.want)
		}
	}
}

func testBadCursor(t *testing.T, ctx context.Context, s ferry.Store) {
	// Something to page through, so a real cursor from one list exists.
	for i := range 3 {
		id := fmt.Sprint("x", i)
		ok(t, "create server", s.CreateServer(ctx, server(id)))
		ok(t, "create job", s.CreateJob(ctx, job(id, base, ferry.JobPending)))
		ok(t, "create application", s.CreateApplication(ctx, application(id, id, "", false)))
		ok(t, "create wave", s.CreateWave(ctx, wave(id, id, false)))
		ok(t, "append audit", s.AppendAudit(ctx, &ferry.AuditEvent{Time: base, Actor: "a", Outcome: ferry.OutcomeSuccess}))
	}
	_, jobCursor, err := s.ListJobs(ctx, ferry.JobFilter{Limit: 1})
	ok(t, "job cursor", err)
	_, serverCursor, err := s.ListServers(ctx, ferry.ServerFilter{Limit: 1})
	ok(t, "server cursor", err)
	if jobCursor == "" || serverCursor == "" {
		t.Fatal("no cursor from a page of 1 of 3")
	}
	lists := []struct {
		name string
		list func(after string) error
		own  string
	}{
		{"ListServers", func(c string) error { _, _, err := s.ListServers(ctx, ferry.ServerFilter{After: c}); return err }, serverCursor},
		{"ListApplications", func(c string) error { _, _, err := s.ListApplications(ctx, ferry.GroupFilter{After: c}); return err }, ""},
		{"ListWaves", func(c string) error { _, _, err := s.ListWaves(ctx, ferry.GroupFilter{After: c}); return err }, ""},
		{"ListJobs", func(c string) error { _, _, err := s.ListJobs(ctx, ferry.JobFilter{After: c}); return err }, jobCursor},
		{"ListAudit", func(c string) error { _, _, err := s.ListAudit(ctx, ferry.AuditFilter{After: c}); return err }, ""},
	}
	for _, l := range lists {
		bad := []string{"!!!not base64!!!", "x0", "eyJ9", "AAAA", "%00"}
		if l.own != jobCursor {
			bad = append(bad, jobCursor)
		}
		if l.own != serverCursor {
			bad = append(bad, serverCursor)
		}
		for _, c := range bad {
			wantErr(t, fmt.Sprintf("%s after %q", l.name, c), l.list(c), ferry.ErrInvalid)
		}
		if l.own != "" {
			ok(t, l.name+" with its own cursor", l.list(l.own))
		}
	}
}
