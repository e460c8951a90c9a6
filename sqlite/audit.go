package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/internal/storedoc"
)

// AppendAudit records an audit event and sets e.ID to its sequence number,
// which grows with every event appended.
func (s *Store) AppendAudit(ctx context.Context, e *ferry.AuditEvent) error {
	c := *e
	c.ID = 0
	doc, err := storedoc.Encode(&c)
	if err != nil {
		return fmt.Errorf("sqlite: append audit: %w", err)
	}
	var id int64
	err = s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO audit (time, actor, outcome, doc) VALUES (?, ?, ?, ?)`,
			e.Time.UnixMicro(), e.Actor, e.Outcome, string(doc))
		if err != nil {
			return err
		}
		id, err = res.LastInsertId()
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: append audit: %w", err)
	}
	e.ID = id
	return nil
}

// ListAudit returns one page of audit events matching f, newest (highest
// ID) first. f.Since keeps events at or after that time.
func (s *Store) ListAudit(ctx context.Context, f ferry.AuditFilter) ([]ferry.AuditEvent, string, error) {
	v, next, err := s.listAudit(ctx, f)
	if err != nil {
		return nil, "", fmt.Errorf("sqlite: list audit: %w", err)
	}
	return v, next, nil
}

func (s *Store) listAudit(ctx context.Context, f ferry.AuditFilter) ([]ferry.AuditEvent, string, error) {
	key, err := storedoc.DecodeCursor("audit", f.After, 1)
	if err != nil {
		return nil, "", err
	}
	q := `SELECT id, doc FROM audit WHERE 1`
	var args []any
	if key != nil {
		id, err := strconv.ParseInt(key[0], 10, 64)
		if err != nil {
			return nil, "", fmt.Errorf("bad page cursor %q: %w", f.After, ferry.ErrInvalid)
		}
		q += ` AND id < ?`
		args = append(args, id)
	}
	if f.Actor != "" {
		q += ` AND actor = ?`
		args = append(args, f.Actor)
	}
	if f.Outcome != "" {
		q += ` AND outcome = ?`
		args = append(args, f.Outcome)
	}
	if !f.Since.IsZero() {
		q += ` AND time >= ?`
		args = append(args, storedoc.CeilUTC(f.Since).UnixMicro())
	}
	limit := ferry.PageLimit(f.Limit)
	q += ` ORDER BY id DESC LIMIT ?`
	rows, err := s.rdb.QueryContext(ctx, q, append(args, limit+1)...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var out []ferry.AuditEvent
	for rows.Next() {
		var (
			id  int64
			doc []byte
		)
		if err := rows.Scan(&id, &doc); err != nil {
			return nil, "", err
		}
		e, err := storedoc.Decode[ferry.AuditEvent](doc)
		if err != nil {
			return nil, "", err
		}
		e.ID = id
		out = append(out, *e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = storedoc.EncodeCursor("audit", strconv.FormatInt(out[limit-1].ID, 10))
	}
	return out, next, nil
}
