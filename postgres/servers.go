package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ferrymigrate/ferry"
	"github.com/jackc/pgx/v5"
)

var servers = &kind[ferry.SourceServer]{
	name:   "server",
	table:  "servers",
	hidden: "convert_to(agent_cert_serial, 'UTF8')",
	id:     func(s *ferry.SourceServer) string { return s.ID },
	cols: func(s *ferry.SourceServer) ([]string, []any) {
		return []string{"machine_id", "hostname", "search", "lifecycle", "replication_state",
				"application_id", "wave_id", "archived", "agent_cert_serial"},
			[]any{nullIfEmpty(s.MachineID), s.Hostname, search(s.ID, s.Hostname), string(s.Lifecycle),
				string(s.Replication.State), s.ApplicationID, s.WaveID, s.Archived, s.CertSerials()}
	},
	hiddenOf: func(s *ferry.SourceServer) []byte { return []byte(s.CertSerials()) },
	load:     func(s *ferry.SourceServer, hidden []byte) { s.SetCertSerials(string(hidden)) },
	uniques: []unique[ferry.SourceServer]{
		{col: "machine_id", label: "machine id", val: func(s *ferry.SourceServer) string { return s.MachineID }},
	},
}

// CreateServer adds a server. A duplicate id or machine id is an error
// wrapping ferry.ErrConflict.
func (s *Store) CreateServer(ctx context.Context, srv *ferry.SourceServer) error {
	return unwrap("create server "+srv.ID, servers.create(ctx, s, srv))
}

// Server returns the server with id, or an error wrapping ferry.ErrNotFound.
func (s *Store) Server(ctx context.Context, id string) (*ferry.SourceServer, error) {
	v, err := servers.get(ctx, s.pool, id, false)
	return v, unwrap("get server "+id, err)
}

// ServerByMachineID returns the server paired with machine id, or an error
// wrapping ferry.ErrNotFound.
func (s *Store) ServerByMachineID(ctx context.Context, machineID string) (*ferry.SourceServer, error) {
	var doc, hidden []byte
	err := s.pool.QueryRow(ctx, `SELECT `+servers.selectCols()+` FROM servers WHERE machine_id = $1`, machineID).Scan(&doc, &hidden)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get server by machine id %s: %w", machineID, ferry.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get server by machine id %s: %w", machineID, err)
	}
	v, err := servers.scan(doc, hidden)
	return v, unwrap("get server by machine id "+machineID, err)
}

// UpdateServer changes a server atomically: it holds the row lock
// (SELECT ... FOR UPDATE) while fn runs, so fn must be quick and must not
// write the same server through the store. If fn returns an error, nothing
// is written and that error is returned as it is. Changing the id is an
// error wrapping ferry.ErrInvalid; taking another server's machine id, one
// wrapping ferry.ErrConflict.
func (s *Store) UpdateServer(ctx context.Context, id string, fn func(*ferry.SourceServer) error) (*ferry.SourceServer, error) {
	v, err := servers.update(ctx, s, id, fn)
	return v, unwrap("update server "+id, err)
}

// ListServers returns one page of servers matching f, ordered by id.
func (s *Store) ListServers(ctx context.Context, f ferry.ServerFilter) ([]*ferry.SourceServer, string, error) {
	w := &where{}
	w.add("archived = $?", f.Archived)
	if len(f.Lifecycle) > 0 {
		ls := make([]string, len(f.Lifecycle))
		for i, l := range f.Lifecycle {
			ls[i] = string(l)
		}
		w.add("lifecycle = ANY($?)", ls)
	}
	if len(f.Replication) > 0 {
		rs := make([]string, len(f.Replication))
		for i, r := range f.Replication {
			rs[i] = string(r)
		}
		w.add("replication_state = ANY($?)", rs)
	}
	if f.ApplicationID != "" {
		w.add("application_id = $?", f.ApplicationID)
	}
	if f.WaveID != "" {
		w.add("wave_id = $?", f.WaveID)
	}
	for k, v := range f.Tags {
		if v == "" {
			w.add("doc->'tags' ? $?::text", k)
		} else {
			w.add("doc->'tags' @> jsonb_build_object($?::text, $?::text)", k, v)
		}
	}
	if f.Text != "" {
		w.add("strpos(search, $?) > 0", strings.ToLower(f.Text))
	}
	v, next, err := servers.list(ctx, s, w, f.After, f.Limit)
	return v, next, unwrap("list servers", err)
}

// DeleteServer removes a server, or returns an error wrapping
// ferry.ErrNotFound.
func (s *Store) DeleteServer(ctx context.Context, id string) error {
	return unwrap("delete server "+id, servers.delete(ctx, s, id))
}
