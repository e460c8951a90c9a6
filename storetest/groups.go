package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/ferrymigrate/ferry"
)

func template(id, name string) *ferry.Template {
	l := ferry.DefaultLaunchSettings()
	l.PostLaunchActions = []ferry.PostLaunchAction{{ID: "p1", Name: "http check", Active: true, Order: 3,
		TimeoutSeconds: 30, MustSucceed: true, Deployment: "TEST_ONLY", Category: "VALIDATION",
		Parameters: map[string]string{"url": "http://{{ip}}/health", "status": "200"}}}
	return &ferry.Template{ID: id, Name: name, Replication: ferry.DefaultReplicationSettings(), Launch: l}
}

func testTemplates(t *testing.T, ctx context.Context, s ferry.Store) {
	ok(t, "create t2", s.CreateTemplate(ctx, template("t2", "beta")))
	ok(t, "create t1", s.CreateTemplate(ctx, template("t1", "alpha")))
	wantErr(t, "duplicate id", s.CreateTemplate(ctx, template("t1", "gamma")), ferry.ErrConflict)
	wantErr(t, "duplicate name", s.CreateTemplate(ctx, template("t3", "alpha")), ferry.ErrConflict)
	_, err := s.Template(ctx, "t3")
	wantErr(t, "template of a failed create", err, ferry.ErrNotFound)

	got, err := s.Template(ctx, "t1")
	ok(t, "get", err)
	same(t, "template", got, template("t1", "alpha"))

	_, err = s.UpdateTemplate(ctx, "t2", func(v *ferry.Template) error { v.Name = "alpha"; return nil })
	wantErr(t, "update to a taken name", err, ferry.ErrConflict)
	boom := errors.New("boom")
	_, err = s.UpdateTemplate(ctx, "t2", func(v *ferry.Template) error { v.Name = "x"; return boom })
	wantErr(t, "callback error", err, boom)
	got, err = s.Template(ctx, "t2")
	ok(t, "get t2", err)
	same(t, "t2 after failed updates", got, template("t2", "beta"))

	want := template("t2", "beta2")
	want.Launch.PostLaunchActions[0].Parameters["extra"] = "1"
	upd, err := s.UpdateTemplate(ctx, "t2", func(v *ferry.Template) error {
		v.Name = "beta2"
		v.Launch.PostLaunchActions[0].Parameters["extra"] = "1"
		return nil
	})
	ok(t, "update", err)
	same(t, "updated template", upd, want)
	_, err = s.UpdateTemplate(ctx, "missing", func(*ferry.Template) error { return nil })
	wantErr(t, "update missing", err, ferry.ErrNotFound)

	list, err := s.ListTemplates(ctx)
	ok(t, "list", err)
	same(t, "list", list, []*ferry.Template{template("t1", "alpha"), want})

	ok(t, "delete", s.DeleteTemplate(ctx, "t1"))
	wantErr(t, "delete again", s.DeleteTemplate(ctx, "t1"), ferry.ErrNotFound)
	_, err = s.Template(ctx, "t1")
	wantErr(t, "get deleted", err, ferry.ErrNotFound)
	ok(t, "name free after delete", s.CreateTemplate(ctx, template("t9", "alpha")))
}

func application(id, name, wave string, archived bool) *ferry.Application {
	return &ferry.Application{ID: id, Name: name, Description: "the " + name + " app", WaveID: wave,
		Tags: map[string]string{"team": "core"}, Archived: archived, CreatedAt: base, UpdatedAt: at(1)}
}

func testApplications(t *testing.T, ctx context.Context, s ferry.Store) {
	fixture := []*ferry.Application{
		application("app-3", "Billing", "w1", false),
		application("app-1", "CRM", "w1", false),
		application("app-2", "Legacy ERP", "w2", true),
		application("app-4", "Web Shop", "", false),
	}
	for _, a := range fixture {
		ok(t, "create "+a.ID, s.CreateApplication(ctx, a))
	}
	wantErr(t, "duplicate id", s.CreateApplication(ctx, application("app-1", "Other", "", false)), ferry.ErrConflict)
	wantErr(t, "duplicate name", s.CreateApplication(ctx, application("app-9", "CRM", "", false)), ferry.ErrConflict)
	got, err := s.Application(ctx, "app-3")
	ok(t, "get", err)
	same(t, "application", got, application("app-3", "Billing", "w1", false))
	_, err = s.Application(ctx, "missing")
	wantErr(t, "get missing", err, ferry.ErrNotFound)

	tests := []struct {
		name string
		f    ferry.GroupFilter
		want []string
	}{
		{"live", ferry.GroupFilter{}, []string{"app-1", "app-3", "app-4"}},
		{"archived", ferry.GroupFilter{Archived: true}, []string{"app-2"}},
		{"wave", ferry.GroupFilter{WaveID: "w1"}, []string{"app-1", "app-3"}},
		{"text name", ferry.GroupFilter{Text: "shop"}, []string{"app-4"}},
		{"text id", ferry.GroupFilter{Text: "APP-3"}, []string{"app-3"}},
		{"text+wave", ferry.GroupFilter{Text: "crm", WaveID: "w1"}, []string{"app-1"}},
		{"archived+text", ferry.GroupFilter{Archived: true, Text: "erp"}, []string{"app-2"}},
		{"archived+wave", ferry.GroupFilter{Archived: true, WaveID: "w1"}, nil},
	}
	for _, tc := range tests {
		for _, size := range []int{1, 100} {
			f := tc.f
			ids := walk(t, size, func(a *ferry.Application) string { return a.ID }, func(after string, limit int) ([]*ferry.Application, string, error) {
				f.After, f.Limit = after, limit
				return s.ListApplications(ctx, f)
			})
			if !slices.Equal(ids, tc.want) {
				t.Errorf("%s, page size %d: got %v, want %v", tc.name, size, ids, tc.want)
			}
		}
	}

	_, err = s.UpdateApplication(ctx, "app-1", func(a *ferry.Application) error { a.Name = "Billing"; return nil })
	wantErr(t, "update to a taken name", err, ferry.ErrConflict)
	upd, err := s.UpdateApplication(ctx, "app-1", func(a *ferry.Application) error {
		a.WaveID, a.Archived, a.UpdatedAt = "w2", true, at(5)
		return nil
	})
	ok(t, "update", err)
	want := application("app-1", "CRM", "w2", true)
	want.UpdatedAt = at(5)
	same(t, "updated", upd, want)
	list, _, err := s.ListApplications(ctx, ferry.GroupFilter{Archived: true, WaveID: "w2"})
	ok(t, "list after update", err)
	if len(list) != 2 {
		t.Fatalf("archived in w2: %d applications, want 2", len(list))
	}
	ok(t, "delete", s.DeleteApplication(ctx, "app-1"))
	wantErr(t, "delete again", s.DeleteApplication(ctx, "app-1"), ferry.ErrNotFound)
	_, err = s.UpdateApplication(ctx, "app-1", func(*ferry.Application) error { return nil })
	wantErr(t, "update deleted", err, ferry.ErrNotFound)
}

func wave(id, name string, archived bool) *ferry.Wave {
	return &ferry.Wave{ID: id, Name: name, Description: "wave " + name, Tags: map[string]string{"q": "3"},
		Archived: archived, CreatedAt: base, UpdatedAt: base}
}

func testWaves(t *testing.T, ctx context.Context, s ferry.Store) {
	for i := range 12 {
		ok(t, "create", s.CreateWave(ctx, wave(fmt.Sprintf("w%02d", i), fmt.Sprintf("Wave %d", i), i%4 == 3)))
	}
	wantErr(t, "duplicate id", s.CreateWave(ctx, wave("w00", "other", false)), ferry.ErrConflict)
	wantErr(t, "duplicate name", s.CreateWave(ctx, wave("w99", "Wave 1", false)), ferry.ErrConflict)
	got, err := s.Wave(ctx, "w05")
	ok(t, "get", err)
	same(t, "wave", got, wave("w05", "Wave 5", false))
	_, err = s.Wave(ctx, "missing")
	wantErr(t, "get missing", err, ferry.ErrNotFound)

	live := []string{"w00", "w01", "w02", "w04", "w05", "w06", "w08", "w09", "w10"}
	for _, size := range pageSizes {
		ids := walk(t, size, func(w *ferry.Wave) string { return w.ID }, func(after string, limit int) ([]*ferry.Wave, string, error) {
			return s.ListWaves(ctx, ferry.GroupFilter{After: after, Limit: limit})
		})
		same(t, fmt.Sprint("live waves, page size ", size), ids, live)
	}
	list, _, err := s.ListWaves(ctx, ferry.GroupFilter{Archived: true})
	ok(t, "archived", err)
	if len(list) != 3 || list[0].ID != "w03" {
		t.Fatalf("archived waves: %d, want w03, w07, w11", len(list))
	}
	list, _, err = s.ListWaves(ctx, ferry.GroupFilter{Text: "WAVE 1"})
	ok(t, "text", err)
	if len(list) != 2 || list[0].ID != "w01" || list[1].ID != "w10" {
		t.Fatalf("text \"WAVE 1\": got %d waves, want w01, w10", len(list))
	}
	list, _, err = s.ListWaves(ctx, ferry.GroupFilter{WaveID: "w01"})
	ok(t, "WaveID is ignored for waves", err)
	if len(list) != len(live) {
		t.Fatalf("WaveID filter on waves: %d, want %d (ignored)", len(list), len(live))
	}

	_, err = s.UpdateWave(ctx, "w00", func(w *ferry.Wave) error { w.Name = "Wave 2"; return nil })
	wantErr(t, "update to a taken name", err, ferry.ErrConflict)
	upd, err := s.UpdateWave(ctx, "w00", func(w *ferry.Wave) error { w.Archived = true; w.Tags = nil; return nil })
	ok(t, "update", err)
	want := wave("w00", "Wave 0", true)
	want.Tags = nil
	same(t, "updated", upd, want)
	ok(t, "delete", s.DeleteWave(ctx, "w00"))
	wantErr(t, "delete again", s.DeleteWave(ctx, "w00"), ferry.ErrNotFound)
}
