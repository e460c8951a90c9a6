package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

func job(id string, created time.Time, status ferry.JobStatus, servers ...string) *ferry.Job {
	j := &ferry.Job{ID: id, Type: ferry.JobLaunch, InitiatedBy: ferry.InitiatedByStartTest, Status: status, CreatedAt: created}
	for _, s := range servers {
		j.Servers = append(j.Servers, ferry.JobServer{SourceServerID: s, LaunchStatus: ferry.LaunchPending})
	}
	return j
}

func testJobs(t *testing.T, ctx context.Context, s ferry.Store) {
	want := job("job-1", base, ferry.JobPending, "s1", "s2")
	want.Servers[1].InstanceID = "i-123"
	ok(t, "create", s.CreateJob(ctx, want))
	wantErr(t, "duplicate id", s.CreateJob(ctx, job("job-1", base, ferry.JobPending)), ferry.ErrConflict)
	got, err := s.Job(ctx, "job-1")
	ok(t, "get", err)
	same(t, "job", got, want)
	_, err = s.Job(ctx, "missing")
	wantErr(t, "get missing", err, ferry.ErrNotFound)

	boom := errors.New("boom")
	_, err = s.UpdateJob(ctx, "job-1", func(j *ferry.Job) error { j.Status = ferry.JobCompleted; return boom })
	wantErr(t, "callback error", err, boom)
	got, err = s.Job(ctx, "job-1")
	ok(t, "get", err)
	if got.Status != ferry.JobPending {
		t.Fatalf("failed update wrote status %s", got.Status)
	}
	upd, err := s.UpdateJob(ctx, "job-1", func(j *ferry.Job) error {
		j.Status = ferry.JobCompleted
		j.EndedAt = at(time.Minute)
		j.Servers[0].LaunchStatus = ferry.LaunchLaunched
		j.Servers = append(j.Servers, ferry.JobServer{SourceServerID: "s3", LaunchStatus: ferry.LaunchFailed})
		return nil
	})
	ok(t, "update", err)
	if upd.Status != ferry.JobCompleted || !upd.EndedAt.Equal(at(time.Minute)) || len(upd.Servers) != 3 {
		t.Fatalf("updated job: %+v", upd)
	}
	list, _, err := s.ListJobs(ctx, ferry.JobFilter{SourceServerID: "s3"})
	ok(t, "list by a server added in an update", err)
	if len(list) != 1 {
		t.Fatalf("jobs of s3: %d, want 1", len(list))
	}
	_, err = s.UpdateJob(ctx, "missing", func(*ferry.Job) error { return nil })
	wantErr(t, "update missing", err, ferry.ErrNotFound)
}

func testJobList(t *testing.T, ctx context.Context, s ferry.Store) {
	// Jobs created at a handful of times, several sharing one, inserted
	// in a scrambled order.
	var all []*ferry.Job
	for i := range 17 {
		status := []ferry.JobStatus{ferry.JobPending, ferry.JobStarted, ferry.JobCompleted}[i%3]
		servers := []string{fmt.Sprintf("s%d", i%4)}
		if i%5 == 0 {
			servers = append(servers, "shared")
		}
		all = append(all, job(fmt.Sprintf("job-%02d", i), at(time.Duration(i/3)*time.Second), status, servers...))
	}
	for _, i := range perm(len(all)) {
		ok(t, "create", s.CreateJob(ctx, all[i]))
	}
	newestFirst := func(keep func(*ferry.Job) bool) []string {
		var js []*ferry.Job
		for _, j := range all {
			if keep(j) {
				js = append(js, j)
			}
		}
		slices.SortFunc(js, func(a, b *ferry.Job) int {
			if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
				return c
			}
			return strings.Compare(b.ID, a.ID)
		})
		var ids []string
		for _, j := range js {
			ids = append(ids, j.ID)
		}
		return ids
	}
	hasServer := func(id string) func(*ferry.Job) bool {
		return func(j *ferry.Job) bool {
			return slices.ContainsFunc(j.Servers, func(s ferry.JobServer) bool { return s.SourceServerID == id })
		}
	}
	tests := []struct {
		name string
		f    ferry.JobFilter
		want []string
	}{
		{"all", ferry.JobFilter{}, newestFirst(func(*ferry.Job) bool { return true })},
		{"server", ferry.JobFilter{SourceServerID: "s1"}, newestFirst(hasServer("s1"))},
		{"shared server", ferry.JobFilter{SourceServerID: "shared"}, newestFirst(hasServer("shared"))},
		{"status", ferry.JobFilter{Status: ferry.JobStarted}, newestFirst(func(j *ferry.Job) bool { return j.Status == ferry.JobStarted })},
		{"server+status", ferry.JobFilter{SourceServerID: "s2", Status: ferry.JobCompleted},
			newestFirst(func(j *ferry.Job) bool { return hasServer("s2")(j) && j.Status == ferry.JobCompleted })},
		{"unknown server", ferry.JobFilter{SourceServerID: "nope"}, nil},
	}
	for _, tc := range tests {
		for _, size := range pageSizes {
			f := tc.f
			ids := walk(t, size, func(j *ferry.Job) string { return j.ID }, func(after string, limit int) ([]*ferry.Job, string, error) {
				f.After, f.Limit = after, limit
				return s.ListJobs(ctx, f)
			})
			if !slices.Equal(ids, tc.want) {
				t.Errorf("%s, page size %d:\ngot  %v\nwant %v", tc.name, size, ids, tc.want)
			}
		}
	}
}

func testJobLog(t *testing.T, ctx context.Context, s ferry.Store) {
	ok(t, "create", s.CreateJob(ctx, job("j", base, ferry.JobStarted, "s1")))
	ok(t, "create other", s.CreateJob(ctx, job("k", base, ferry.JobStarted, "s1")))
	events := []ferry.JobEvent{ferry.EventJobStart, ferry.EventSnapshotStart, ferry.EventSnapshotEnd,
		ferry.EventConversionStart, ferry.EventConversionEnd, ferry.EventLaunchStart, ferry.EventJobEnd}
	var want []ferry.JobLogItem
	for i, e := range events {
		// Times deliberately not in order: the log keeps write order.
		it := ferry.JobLogItem{JobID: "j", Time: at(time.Duration(len(events)-i) * time.Second), Event: e,
			SourceServerID: "s1", Message: fmt.Sprintf("step %d", i)}
		want = append(want, it)
		ok(t, "append", s.AppendJobLog(ctx, it))
		ok(t, "append other", s.AppendJobLog(ctx, ferry.JobLogItem{JobID: "k", Time: base, Event: e}))
	}
	got, err := s.JobLog(ctx, "j")
	ok(t, "log", err)
	same(t, "log", got, want)
	empty, err := s.JobLog(ctx, "k")
	ok(t, "log k", err)
	if len(empty) != len(events) {
		t.Fatalf("log k: %d entries, want %d", len(empty), len(events))
	}
	wantErr(t, "append to missing job", s.AppendJobLog(ctx, ferry.JobLogItem{JobID: "missing", Time: base, Event: ferry.EventJobStart}), ferry.ErrNotFound)
	_, err = s.JobLog(ctx, "missing")
	wantErr(t, "log of missing job", err, ferry.ErrNotFound)
}
