package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/internal/storedoc"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store is a ferry.Store in a PostgreSQL database. Open it with Open; it
// is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
}

var _ ferry.Store = (*Store)(nil)

// Open connects to the PostgreSQL database at url (a postgres:// URL or a
// key=value connection string) and brings its schema up to date. It fails
// if the database was written by a newer Ferry.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The error may quote the URL, password included; do not wrap it.
		return nil, fmt.Errorf("postgres: open: bad database URL: %w", ferry.ErrInvalid)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: open %s:%d/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Close closes every connection.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// querier is what *pgxpool.Pool and pgx.Tx share.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// write runs fn in a transaction and commits it if fn returns nil.
func (s *Store) write(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback(ctx)
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		if isUnique(err) {
			return fmt.Errorf("%w: %v", ferry.ErrConflict, err)
		}
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// isUnique reports whether err is a unique_violation.
func isUnique(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// unique is a column whose values must be unique within a table.
type unique[T any] struct {
	col   string          // column name
	label string          // for errors: "machine id", "name"
	val   func(*T) string // "" is never checked
}

// kind describes how one type of object is kept: a table with id and doc
// columns, the indexed columns derived from the object, and the one
// json:"-" field, if the type has one.
type kind[T any] struct {
	name   string // for errors
	table  string
	hidden string // SQL expression giving the json:"-" field as bytea
	id     func(*T) string
	cols   func(*T) ([]string, []any) // derived columns
	// hiddenOf and load get and set the json:"-" field.
	hiddenOf func(*T) []byte
	load     func(*T, []byte)
	uniques  []unique[T]
}

func (k *kind[T]) selectCols() string {
	if k.hidden == "" {
		return "doc, NULL::bytea"
	}
	return "doc, " + k.hidden
}

// scan reads a (doc, hidden) pair into a new object.
func (k *kind[T]) scan(doc, hidden []byte) (*T, error) {
	v, err := storedoc.Decode[T](doc)
	if err != nil {
		return nil, err
	}
	if k.load != nil {
		k.load(v, hidden)
	}
	return v, nil
}

func (k *kind[T]) get(ctx context.Context, q querier, id string, lock bool) (*T, error) {
	sql := `SELECT ` + k.selectCols() + ` FROM ` + k.table + ` WHERE id = $1`
	if lock {
		sql += ` FOR UPDATE`
	}
	var doc, hidden []byte
	err := q.QueryRow(ctx, sql, id).Scan(&doc, &hidden)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s %s: %w", k.name, id, ferry.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return k.scan(doc, hidden)
}

// checkUnique returns an error wrapping ferry.ErrConflict when another
// row than id holds one of v's unique values.
func (k *kind[T]) checkUnique(ctx context.Context, tx pgx.Tx, id string, v *T) error {
	for _, u := range k.uniques {
		val := u.val(v)
		if val == "" {
			continue
		}
		var other string
		err := tx.QueryRow(ctx, `SELECT id FROM `+k.table+` WHERE `+u.col+` = $1 AND id <> $2`, val, id).Scan(&other)
		switch {
		case err == nil:
			return fmt.Errorf("%s %q is taken by %s %s: %w", u.label, val, k.name, other, ferry.ErrConflict)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
	}
	return nil
}

// encode returns the columns and values to write for v, and the object a
// read would return.
func (k *kind[T]) encode(v *T) (cols []string, vals []any, out *T, err error) {
	doc, err := storedoc.Encode(v)
	if err != nil {
		return nil, nil, nil, err
	}
	out, err = storedoc.Decode[T](doc)
	if err != nil {
		return nil, nil, nil, err
	}
	if k.load != nil {
		k.load(out, k.hiddenOf(v))
	}
	cols, vals = k.cols(v)
	return append(cols, "doc"), append(vals, string(doc)), out, nil
}

func (k *kind[T]) create(ctx context.Context, s *Store, v *T) error {
	id := k.id(v)
	if id == "" {
		return fmt.Errorf("empty id: %w", ferry.ErrInvalid)
	}
	cols, vals, _, err := k.encode(v)
	if err != nil {
		return err
	}
	return s.write(ctx, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM `+k.table+` WHERE id = $1`, id).Scan(&one)
		switch {
		case err == nil:
			return fmt.Errorf("id exists: %w", ferry.ErrConflict)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		if err := k.checkUnique(ctx, tx, id, v); err != nil {
			return err
		}
		ph := make([]string, len(cols)+1)
		for i := range ph {
			ph[i] = fmt.Sprintf("$%d", i+1)
		}
		q := `INSERT INTO ` + k.table + ` (id, ` + strings.Join(cols, ", ") + `) VALUES (` + strings.Join(ph, ", ") + `)`
		if _, err := tx.Exec(ctx, q, append([]any{id}, vals...)...); err != nil {
			if isUnique(err) {
				return fmt.Errorf("%w: %v", ferry.ErrConflict, err)
			}
			return err
		}
		return nil
	})
}

// errCallback marks an error returned by an update callback, which is
// handed back to the caller as it is.
type errCallback struct{ err error }

func (e errCallback) Error() string { return e.err.Error() }

func (k *kind[T]) update(ctx context.Context, s *Store, id string, fn func(*T) error) (*T, error) {
	var out *T
	err := s.write(ctx, func(tx pgx.Tx) error {
		v, err := k.get(ctx, tx, id, true)
		if err != nil {
			return err
		}
		if err := fn(v); err != nil {
			return errCallback{err}
		}
		if got := k.id(v); got != id {
			return fmt.Errorf("callback changed the id to %q: %w", got, ferry.ErrInvalid)
		}
		if err := k.checkUnique(ctx, tx, id, v); err != nil {
			return err
		}
		cols, vals, o, err := k.encode(v)
		if err != nil {
			return err
		}
		set := make([]string, len(cols))
		for i, c := range cols {
			set[i] = fmt.Sprintf("%s = $%d", c, i+1)
		}
		q := `UPDATE ` + k.table + ` SET ` + strings.Join(set, ", ") + fmt.Sprintf(` WHERE id = $%d`, len(cols)+1)
		if _, err := tx.Exec(ctx, q, append(vals, id)...); err != nil {
			if isUnique(err) {
				return fmt.Errorf("%w: %v", ferry.ErrConflict, err)
			}
			return err
		}
		out = o
		return nil
	})
	return out, err
}

func (k *kind[T]) delete(ctx context.Context, s *Store, id string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM `+k.table+` WHERE id = $1`, id)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s %s: %w", k.name, id, ferry.ErrNotFound)
	}
	return nil
}

// where collects SQL conditions and their arguments.
type where struct {
	conds []string
	args  []any
}

// add appends a condition; each $? in cond becomes the next $n
// placeholder, for the matching value.
func (w *where) add(cond string, vals ...any) {
	for _, v := range vals {
		w.args = append(w.args, v)
		cond = strings.Replace(cond, "$?", fmt.Sprintf("$%d", len(w.args)), 1)
	}
	w.conds = append(w.conds, cond)
}

func (w *where) sql() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// list returns one page of objects ordered by id that match w, and the
// cursor for the next page.
func (k *kind[T]) list(ctx context.Context, s *Store, w *where, after string, limit int) ([]*T, string, error) {
	key, err := storedoc.DecodeCursor(k.table, after, 1)
	if err != nil {
		return nil, "", err
	}
	if key != nil {
		w.add("id > $?", key[0])
	}
	limit = ferry.PageLimit(limit)
	q := `SELECT id, ` + k.selectCols() + ` FROM ` + k.table + w.sql() + fmt.Sprintf(` ORDER BY id LIMIT %d`, limit+1)
	rows, err := s.pool.Query(ctx, q, w.args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var (
		out []*T
		ids []string
	)
	for rows.Next() {
		var (
			id          string
			doc, hidden []byte
		)
		if err := rows.Scan(&id, &doc, &hidden); err != nil {
			return nil, "", err
		}
		v, err := k.scan(doc, hidden)
		if err != nil {
			return nil, "", err
		}
		out = append(out, v)
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = storedoc.EncodeCursor(k.table, ids[limit-1])
	}
	return out, next, nil
}

// unwrap returns a callback's error as it was, and wraps any other error
// with the operation.
func unwrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var cb errCallback
	if errors.As(err, &cb) {
		return cb.err
	}
	return fmt.Errorf("postgres: %s: %w", op, err)
}

// nullIfEmpty keeps empty strings out of unique columns.
func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// search is the text a Text filter matches.
func search(a, b string) string {
	return strings.ToLower(a) + "\n" + strings.ToLower(b)
}

// listAll returns every object of a kind, ordered by id.
func listAll[T any](ctx context.Context, s *Store, k *kind[T]) ([]*T, error) {
	var all []*T
	after := ""
	for {
		page, next, err := k.list(ctx, s, &where{}, after, ferry.MaxPageSize)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" {
			return all, nil
		}
		after = next
	}
}
