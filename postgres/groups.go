package postgres

import (
	"context"
	"strings"

	"github.com/ferrymigrate/ferry"
)

var templates = &kind[ferry.Template]{
	name:  "template",
	table: "templates",
	id:    func(t *ferry.Template) string { return t.ID },
	cols:  func(t *ferry.Template) ([]string, []any) { return []string{"name"}, []any{t.Name} },
	uniques: []unique[ferry.Template]{
		{col: "name", label: "name", val: func(t *ferry.Template) string { return t.Name }},
	},
}

// CreateTemplate adds a template. A duplicate id or name is an error
// wrapping ferry.ErrConflict.
func (s *Store) CreateTemplate(ctx context.Context, t *ferry.Template) error {
	return unwrap("create template "+t.ID, templates.create(ctx, s, t))
}

// Template returns a template by id, or an error wrapping ferry.ErrNotFound.
func (s *Store) Template(ctx context.Context, id string) (*ferry.Template, error) {
	v, err := templates.get(ctx, s.pool, id, false)
	return v, unwrap("get template "+id, err)
}

// UpdateTemplate changes a template atomically, as UpdateServer does.
func (s *Store) UpdateTemplate(ctx context.Context, id string, fn func(*ferry.Template) error) (*ferry.Template, error) {
	v, err := templates.update(ctx, s, id, fn)
	return v, unwrap("update template "+id, err)
}

// ListTemplates returns every template, ordered by id.
func (s *Store) ListTemplates(ctx context.Context) ([]*ferry.Template, error) {
	v, err := listAll(ctx, s, templates)
	return v, unwrap("list templates", err)
}

// DeleteTemplate removes a template, or returns an error wrapping
// ferry.ErrNotFound.
func (s *Store) DeleteTemplate(ctx context.Context, id string) error {
	return unwrap("delete template "+id, templates.delete(ctx, s, id))
}

var applications = &kind[ferry.Application]{
	name:  "application",
	table: "applications",
	id:    func(a *ferry.Application) string { return a.ID },
	cols: func(a *ferry.Application) ([]string, []any) {
		return []string{"name", "search", "wave_id", "archived"},
			[]any{a.Name, search(a.ID, a.Name), a.WaveID, a.Archived}
	},
	uniques: []unique[ferry.Application]{
		{col: "name", label: "name", val: func(a *ferry.Application) string { return a.Name }},
	},
}

// CreateApplication adds an application. A duplicate id or name is an
// error wrapping ferry.ErrConflict.
func (s *Store) CreateApplication(ctx context.Context, a *ferry.Application) error {
	return unwrap("create application "+a.ID, applications.create(ctx, s, a))
}

// Application returns an application by id, or an error wrapping
// ferry.ErrNotFound.
func (s *Store) Application(ctx context.Context, id string) (*ferry.Application, error) {
	v, err := applications.get(ctx, s.pool, id, false)
	return v, unwrap("get application "+id, err)
}

// UpdateApplication changes an application atomically, as UpdateServer
// does.
func (s *Store) UpdateApplication(ctx context.Context, id string, fn func(*ferry.Application) error) (*ferry.Application, error) {
	v, err := applications.update(ctx, s, id, fn)
	return v, unwrap("update application "+id, err)
}

// ListApplications returns one page of applications matching f, ordered by
// id.
func (s *Store) ListApplications(ctx context.Context, f ferry.GroupFilter) ([]*ferry.Application, string, error) {
	w := groupWhere(f)
	if f.WaveID != "" {
		w.add("wave_id = $?", f.WaveID)
	}
	v, next, err := applications.list(ctx, s, w, f.After, f.Limit)
	return v, next, unwrap("list applications", err)
}

// DeleteApplication removes an application, or returns an error wrapping
// ferry.ErrNotFound.
func (s *Store) DeleteApplication(ctx context.Context, id string) error {
	return unwrap("delete application "+id, applications.delete(ctx, s, id))
}

var waves = &kind[ferry.Wave]{
	name:  "wave",
	table: "waves",
	id:    func(w *ferry.Wave) string { return w.ID },
	cols: func(w *ferry.Wave) ([]string, []any) {
		return []string{"name", "search", "archived"}, []any{w.Name, search(w.ID, w.Name), w.Archived}
	},
	uniques: []unique[ferry.Wave]{
		{col: "name", label: "name", val: func(w *ferry.Wave) string { return w.Name }},
	},
}

// CreateWave adds a wave. A duplicate id or name is an error wrapping
// ferry.ErrConflict.
func (s *Store) CreateWave(ctx context.Context, w *ferry.Wave) error {
	return unwrap("create wave "+w.ID, waves.create(ctx, s, w))
}

// Wave returns a wave by id, or an error wrapping ferry.ErrNotFound.
func (s *Store) Wave(ctx context.Context, id string) (*ferry.Wave, error) {
	v, err := waves.get(ctx, s.pool, id, false)
	return v, unwrap("get wave "+id, err)
}

// UpdateWave changes a wave atomically, as UpdateServer does.
func (s *Store) UpdateWave(ctx context.Context, id string, fn func(*ferry.Wave) error) (*ferry.Wave, error) {
	v, err := waves.update(ctx, s, id, fn)
	return v, unwrap("update wave "+id, err)
}

// ListWaves returns one page of waves matching f (f.WaveID is ignored),
// ordered by id.
func (s *Store) ListWaves(ctx context.Context, f ferry.GroupFilter) ([]*ferry.Wave, string, error) {
	v, next, err := waves.list(ctx, s, groupWhere(f), f.After, f.Limit)
	return v, next, unwrap("list waves", err)
}

// DeleteWave removes a wave, or returns an error wrapping ferry.ErrNotFound.
func (s *Store) DeleteWave(ctx context.Context, id string) error {
	return unwrap("delete wave "+id, waves.delete(ctx, s, id))
}

// groupWhere returns the conditions for GroupFilter fields that
// applications and waves share.
func groupWhere(f ferry.GroupFilter) *where {
	w := &where{}
	w.add("archived = $?", f.Archived)
	if f.Text != "" {
		w.add("strpos(search, $?) > 0", strings.ToLower(f.Text))
	}
	return w
}
