package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/internal/storedoc"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Store is a ferry.Store in one SQLite file. Open it with Open; it is safe
// for concurrent use.
type Store struct {
	db  *sql.DB // one connection: the only writer, used by writer alone
	rdb *sql.DB // read-only connections for plain reads

	mu     sync.Mutex
	queue  []*writeReq // writes waiting for the writer, oldest first
	closed bool        // Close was called: queue takes no more
	// wake tells the writer that queue or closed changed; it holds at
	// most one pending signal, which is all the writer needs.
	wake    chan struct{}
	stopped chan struct{} // closed when the writer has returned

	commits atomic.Int64 // transactions the writer committed or tried to
	writes  atomic.Int64 // writes the writer ran (committed or not)
	commitT atomic.Int64 // nanoseconds spent in COMMIT, its fsync included
	groupT  atomic.Int64 // nanoseconds from BEGIN to the end of COMMIT
}

// WriterStats are the single writer's figures since Open: what an operator
// of a busy server watches to see whether the metadata store keeps up.
type WriterStats struct {
	Commits int64         // transactions committed (or tried)
	Writes  int64         // writes run; Writes/Commits is the mean group
	Commit  time.Duration // time spent committing (the fsync)
	Busy    time.Duration // time from BEGIN to the end of COMMIT
	Queued  int           // writes waiting now
}

// WriterStats returns the writer's figures.
func (s *Store) WriterStats() WriterStats {
	s.mu.Lock()
	q := len(s.queue)
	s.mu.Unlock()
	return WriterStats{Commits: s.commits.Load(), Writes: s.writes.Load(),
		Commit: time.Duration(s.commitT.Load()), Busy: time.Duration(s.groupT.Load()), Queued: q}
}

var _ ferry.Store = (*Store)(nil)

// readConns is the size of the read-only pool.
const readConns = 4

// dsn returns the data source name for the database file at path, with
// the pragmas every connection needs.
func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(FULL)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Set("_txlock", "immediate")
		// The writer's page cache outlives its transactions (no other
		// connection writes). SQLite's default of 2 MB is a few hundred
		// server records: a group of thousands of updates then spills
		// pages into the WAL mid-transaction and re-reads the table on
		// every group. 64 MiB holds tens of thousands of records.
		q.Add("_pragma", "cache_size(-65536)")
	}
	return "file:" + path + "?" + q.Encode()
}

// createPrivate creates the file at path with mode 0600 if it does not
// exist, and removes group and other permissions from it and its -wal and
// -shm files if it does. ":memory:" and other non-files are left alone.
func createPrivate(path string) error {
	if path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, fi.Mode().Perm()&0o700); err != nil {
				return err
			}
		}
	}
	return nil
}

// Open opens the SQLite database at path, creating it if needed, and
// brings its schema up to date. It fails if the database was written by a
// newer Ferry.
func Open(path string) (*Store, error) {
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("sqlite: open %q: path must be a file name without ? or #: %w", path, ferry.ErrInvalid)
	}
	// The database holds token hashes and agent certificate serials:
	// create it 0600 (SQLite gives its -wal and -shm files the database's
	// mode), and tighten one an older Ferry created.
	if err := createPrivate(path); err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	db, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	if err := migrate(context.Background(), db); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	rdb, err := sql.Open("sqlite", dsn(path, true))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	rdb.SetMaxOpenConns(readConns)
	rdb.SetMaxIdleConns(readConns)
	if err := rdb.Ping(); err != nil {
		db.Close()
		rdb.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	s := &Store{db: db, rdb: rdb, wake: make(chan struct{}, 1), stopped: make(chan struct{})}
	go s.writer()
	return s, nil
}

// Close closes the database. Writes already waiting run first, and Close
// waits for them; writes made after it return an error wrapping ErrClosed.
// Close may be called more than once.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
	<-s.stopped
	return errors.Join(s.rdb.Close(), s.db.Close())
}

// querier is what *sql.DB and *sql.Tx share.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// isConstraint reports whether err is a uniqueness or primary-key
// violation.
func isConstraint(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return true
		}
	}
	return false
}

// unique is a column whose values must be unique within a table.
type unique[T any] struct {
	col   string          // column name
	label string          // for errors: "machine id", "name"
	val   func(*T) string // "" is never checked
}

// kind describes how one type of object is kept: a table with id and doc
// columns, the indexed columns derived from the object, and the one
// json:"-" field (kept in column hidden) if the type has one.
type kind[T any] struct {
	name    string // for errors
	table   string
	hidden  string // column of the json:"-" field, or ""
	id      func(*T) string
	cols    func(*T) ([]string, []any) // derived columns, hidden included
	load    func(*T, sql.RawBytes)     // sets the json:"-" field
	uniques []unique[T]
	// after keeps side tables in step after a row is written.
	after func(ctx context.Context, tx *sql.Tx, v *T) error
	// sides, when set, is what after writes, as a comparable value:
	// an update whose callback left it unchanged skips after, since
	// rewriting a side table is most of the cost of a frequent small
	// update (a session's figures) that never touches it.
	sides func(*T) string
}

func (k *kind[T]) selectCols() string {
	if k.hidden == "" {
		return "doc, NULL"
	}
	return "doc, " + k.hidden
}

// scan reads a (doc, hidden) pair into a new object.
func (k *kind[T]) scan(doc []byte, hidden sql.RawBytes) (*T, error) {
	v, err := storedoc.Decode[T](doc)
	if err != nil {
		return nil, err
	}
	if k.load != nil {
		k.load(v, hidden)
	}
	return v, nil
}

func (k *kind[T]) get(ctx context.Context, q querier, id string) (*T, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+k.selectCols()+` FROM `+k.table+` WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s %s: %w", k.name, id, ferry.ErrNotFound)
	}
	var doc []byte
	var hidden sql.RawBytes
	if err := rows.Scan(&doc, &hidden); err != nil {
		return nil, err
	}
	return k.scan(doc, hidden)
}

// checkUnique returns an error wrapping ferry.ErrConflict when another
// row than id holds one of v's unique values.
func (k *kind[T]) checkUnique(ctx context.Context, tx *sql.Tx, id string, v *T) error {
	for _, u := range k.uniques {
		val := u.val(v)
		if val == "" {
			continue
		}
		var other string
		err := tx.QueryRowContext(ctx, `SELECT id FROM `+k.table+` WHERE `+u.col+` = ? AND id <> ?`, val, id).Scan(&other)
		switch {
		case err == nil:
			return fmt.Errorf("%s %q is taken by %s %s: %w", u.label, val, k.name, other, ferry.ErrConflict)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
	}
	return nil
}

// encode returns the derived columns and document of v, and the object a
// read would return.
func (k *kind[T]) encode(v *T) (cols []string, vals []any, out *T, err error) {
	doc, out, err := storedoc.EncodeCopy(v)
	if err != nil {
		return nil, nil, nil, err
	}
	cols, vals = k.cols(v)
	if k.load != nil {
		var hidden sql.RawBytes
		for i, c := range cols {
			if c == k.hidden {
				switch h := vals[i].(type) {
				case string:
					hidden = sql.RawBytes(h)
				case []byte:
					hidden = h
				}
			}
		}
		k.load(out, hidden)
	}
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
	return s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM `+k.table+` WHERE id = ?`, id).Scan(&one)
		switch {
		case err == nil:
			return fmt.Errorf("id exists: %w", ferry.ErrConflict)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if err := k.checkUnique(ctx, tx, id, v); err != nil {
			return err
		}
		q := `INSERT INTO ` + k.table + ` (id, ` + strings.Join(cols, ", ") + `) VALUES (?` + strings.Repeat(", ?", len(cols)) + `)`
		if _, err := tx.ExecContext(ctx, q, append([]any{id}, vals...)...); err != nil {
			if isConstraint(err) {
				return fmt.Errorf("%w: %v", ferry.ErrConflict, err)
			}
			return err
		}
		if k.after != nil {
			return k.after(ctx, tx, v)
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
	err := s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		out = nil // fn may run twice (see write)
		v, err := k.get(ctx, tx, id)
		if err != nil {
			return err
		}
		var before string
		if k.sides != nil {
			before = k.sides(v)
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
			set[i] = c + " = ?"
		}
		if _, err := tx.ExecContext(ctx, `UPDATE `+k.table+` SET `+strings.Join(set, ", ")+` WHERE id = ?`, append(vals, id)...); err != nil {
			if isConstraint(err) {
				return fmt.Errorf("%w: %v", ferry.ErrConflict, err)
			}
			return err
		}
		if k.after != nil && (k.sides == nil || k.sides(v) != before) {
			if err := k.after(ctx, tx, v); err != nil {
				return err
			}
		}
		out = o
		return nil
	})
	return out, err
}

func (k *kind[T]) delete(ctx context.Context, s *Store, id string) error {
	return s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM `+k.table+` WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("%s %s: %w", k.name, id, ferry.ErrNotFound)
		}
		return nil
	})
}

// list returns one page of objects ordered by id that match where (SQL
// conditions joined with AND), and the cursor for the next page.
func (k *kind[T]) list(ctx context.Context, s *Store, where []string, args []any, after string, limit int) ([]*T, string, error) {
	key, err := storedoc.DecodeCursor(k.table, after, 1)
	if err != nil {
		return nil, "", err
	}
	if key != nil {
		where = append(where, "id > ?")
		args = append(args, key[0])
	}
	limit = ferry.PageLimit(limit)
	q := `SELECT id, ` + k.selectCols() + ` FROM ` + k.table
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY id LIMIT ?`
	rows, err := s.rdb.QueryContext(ctx, q, append(args, limit+1)...)
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
			id     string
			doc    []byte
			hidden sql.RawBytes
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
	return fmt.Errorf("sqlite: %s: %w", op, err)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
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

// placeholders returns "?, ?, ?" for n values.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}
