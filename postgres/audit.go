package postgres

import (
	"context"
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
		return fmt.Errorf("postgres: append audit: %w", err)
	}
	var id int64
	err = s.pool.QueryRow(ctx, `INSERT INTO audit (time, actor, outcome, doc) VALUES ($1, $2, $3, $4) RETURNING id`,
		storedoc.UTC(e.Time), e.Actor, e.Outcome, string(doc)).Scan(&id)
	if err != nil {
		return fmt.Errorf("postgres: append audit: %w", err)
	}
	e.ID = id
	return nil
}

// ListAudit returns one page of audit events matching f, newest (highest
// ID) first. f.Since keeps events at or after that time.
func (s *Store) ListAudit(ctx context.Context, f ferry.AuditFilter) ([]ferry.AuditEvent, string, error) {
	v, next, err := s.listAudit(ctx, f)
	if err != nil {
		return nil, "", fmt.Errorf("postgres: list audit: %w", err)
	}
	return v, next, nil
}

func (s *Store) listAudit(ctx context.Context, f ferry.AuditFilter) ([]ferry.AuditEvent, string, error) {
	key, err := storedoc.DecodeCursor("audit", f.After, 1)
	if err != nil {
		return nil, "", err
	}
	w := &where{}
	if key != nil {
		id, err := strconv.ParseInt(key[0], 10, 64)
		if err != nil {
			return nil, "", fmt.Errorf("bad page cursor %q: %w", f.After, ferry.ErrInvalid)
		}
		w.add("id < $?", id)
	}
	if f.Actor != "" {
		w.add("actor = $?", f.Actor)
	}
	if f.Outcome != "" {
		w.add("outcome = $?", f.Outcome)
	}
	if !f.Since.IsZero() {
		w.add("time >= $?", storedoc.CeilUTC(f.Since))
	}
	limit := ferry.PageLimit(f.Limit)
	q := `SELECT id, doc FROM audit` + w.sql() + fmt.Sprintf(` ORDER BY id DESC LIMIT %d`, limit+1)
	rows, err := s.pool.Query(ctx, q, w.args...)
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
