package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ferrymigrate/ferry"
)

var servers = &kind[ferry.SourceServer]{
	name:   "server",
	table:  "servers",
	hidden: "agent_cert_serial",
	id:     func(s *ferry.SourceServer) string { return s.ID },
	cols: func(s *ferry.SourceServer) ([]string, []any) {
		return []string{"machine_id", "hostname", "search", "lifecycle", "replication_state",
				"application_id", "wave_id", "archived", "agent_cert_serial"},
			[]any{nullIfEmpty(s.MachineID), s.Hostname, search(s.ID, s.Hostname), string(s.Lifecycle),
				string(s.Replication.State), s.ApplicationID, s.WaveID, boolInt(s.Archived), s.CertSerials()}
	},
	load: func(s *ferry.SourceServer, hidden sql.RawBytes) { s.SetCertSerials(string(hidden)) },
	uniques: []unique[ferry.SourceServer]{
		{col: "machine_id", label: "machine id", val: func(s *ferry.SourceServer) string { return s.MachineID }},
	},
	after: func(ctx context.Context, tx *sql.Tx, s *ferry.SourceServer) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM server_tags WHERE server_id = ?`, s.ID); err != nil {
			return err
		}
		for k, v := range s.Tags {
			if _, err := tx.ExecContext(ctx, `INSERT INTO server_tags (server_id, key, value) VALUES (?, ?, ?)`, s.ID, k, v); err != nil {
				return err
			}
		}
		return nil
	},
	sides: func(s *ferry.SourceServer) string { return sideKey(s.Tags) },
}

// sideKey is a map's entries in a canonical form: equal for equal maps.
func sideKey(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
	var b strings.Builder
	for _, k := range keys {
		sideField(&b, k)
		sideField(&b, m[k])
	}
	return b.String()
}

// sideField appends s to a side key with its length first, so that no
// string can pass for a separator and run two fields together.
func sideField(b *strings.Builder, s string) {
	fmt.Fprintf(b, "%d:%s", len(s), s)
}

// CreateServer adds a server. A duplicate id or machine id is an error
// wrapping ferry.ErrConflict.
func (s *Store) CreateServer(ctx context.Context, srv *ferry.SourceServer) error {
	return unwrap("create server "+srv.ID, servers.create(ctx, s, srv))
}

// Server returns the server with id, or an error wrapping ferry.ErrNotFound.
func (s *Store) Server(ctx context.Context, id string) (*ferry.SourceServer, error) {
	v, err := servers.get(ctx, s.rdb, id)
	return v, unwrap("get server "+id, err)
}

// ServerByMachineID returns the server paired with machine id, or an error
// wrapping ferry.ErrNotFound.
func (s *Store) ServerByMachineID(ctx context.Context, machineID string) (*ferry.SourceServer, error) {
	var id string
	err := s.rdb.QueryRowContext(ctx, `SELECT id FROM servers WHERE machine_id = ?`, machineID).Scan(&id)
	if err == sql.ErrNoRows || machineID == "" {
		return nil, fmt.Errorf("sqlite: get server by machine id %s: %w", machineID, ferry.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get server by machine id %s: %w", machineID, err)
	}
	return s.Server(ctx, id)
}

// UpdateServer changes a server atomically, holding the database's write
// lock while fn runs: fn must be quick and must not call the store. fn
// runs on the store's writer goroutine and, if a storage error broke the
// transaction it shared with other writes, may run again on a fresh copy,
// so it must only change the server it is given. If fn returns an error,
// nothing is written and that error is returned as it is.
// Changing the id is an error wrapping ferry.ErrInvalid; taking another
// server's machine id, one wrapping ferry.ErrConflict.
func (s *Store) UpdateServer(ctx context.Context, id string, fn func(*ferry.SourceServer) error) (*ferry.SourceServer, error) {
	v, err := servers.update(ctx, s, id, fn)
	return v, unwrap("update server "+id, err)
}

// ListServers returns one page of servers matching f, ordered by id.
func (s *Store) ListServers(ctx context.Context, f ferry.ServerFilter) ([]*ferry.SourceServer, string, error) {
	where := []string{"archived = ?"}
	args := []any{boolInt(f.Archived)}
	if len(f.Lifecycle) > 0 {
		where = append(where, "lifecycle IN ("+placeholders(len(f.Lifecycle))+")")
		for _, l := range f.Lifecycle {
			args = append(args, string(l))
		}
	}
	if len(f.Replication) > 0 {
		where = append(where, "replication_state IN ("+placeholders(len(f.Replication))+")")
		for _, r := range f.Replication {
			args = append(args, string(r))
		}
	}
	if f.ApplicationID != "" {
		where = append(where, "application_id = ?")
		args = append(args, f.ApplicationID)
	}
	if f.WaveID != "" {
		where = append(where, "wave_id = ?")
		args = append(args, f.WaveID)
	}
	for k, v := range f.Tags {
		if v == "" {
			where = append(where, "EXISTS (SELECT 1 FROM server_tags t WHERE t.server_id = servers.id AND t.key = ?)")
			args = append(args, k)
		} else {
			where = append(where, "EXISTS (SELECT 1 FROM server_tags t WHERE t.server_id = servers.id AND t.key = ? AND t.value = ?)")
			args = append(args, k, v)
		}
	}
	if f.Text != "" {
		where = append(where, "instr(search, ?) > 0")
		args = append(args, strings.ToLower(f.Text))
	}
	v, next, err := servers.list(ctx, s, where, args, f.After, f.Limit)
	return v, next, unwrap("list servers", err)
}

// DeleteServer removes a server, or returns an error wrapping
// ferry.ErrNotFound.
func (s *Store) DeleteServer(ctx context.Context, id string) error {
	return unwrap("delete server "+id, servers.delete(ctx, s, id))
}
