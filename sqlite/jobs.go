package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/internal/storedoc"
)

var jobs = &kind[ferry.Job]{
	name:  "job",
	table: "jobs",
	id:    func(j *ferry.Job) string { return j.ID },
	cols: func(j *ferry.Job) ([]string, []any) {
		return []string{"created_at", "status"}, []any{j.CreatedAt.UnixMicro(), string(j.Status)}
	},
	after: func(ctx context.Context, tx *sql.Tx, j *ferry.Job) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM job_servers WHERE job_id = ?`, j.ID); err != nil {
			return err
		}
		for _, js := range j.Servers {
			if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO job_servers (job_id, server_id) VALUES (?, ?)`, j.ID, js.SourceServerID); err != nil {
				return err
			}
		}
		return nil
	},
	sides: func(j *ferry.Job) string {
		var b strings.Builder
		for _, js := range j.Servers {
			sideField(&b, js.SourceServerID)
		}
		return b.String()
	},
}

// CreateJob adds a job. A duplicate id is an error wrapping
// ferry.ErrConflict.
func (s *Store) CreateJob(ctx context.Context, j *ferry.Job) error {
	return unwrap("create job "+j.ID, jobs.create(ctx, s, j))
}

// Job returns a job by id, or an error wrapping ferry.ErrNotFound.
func (s *Store) Job(ctx context.Context, id string) (*ferry.Job, error) {
	v, err := jobs.get(ctx, s.rdb, id)
	return v, unwrap("get job "+id, err)
}

// UpdateJob changes a job atomically, as UpdateServer does.
func (s *Store) UpdateJob(ctx context.Context, id string, fn func(*ferry.Job) error) (*ferry.Job, error) {
	v, err := jobs.update(ctx, s, id, fn)
	return v, unwrap("update job "+id, err)
}

// ListJobs returns one page of jobs matching f, newest first (by CreatedAt
// to the microsecond, then by id, descending).
func (s *Store) ListJobs(ctx context.Context, f ferry.JobFilter) ([]*ferry.Job, string, error) {
	v, next, err := s.listJobs(ctx, f)
	return v, next, unwrap("list jobs", err)
}

func (s *Store) listJobs(ctx context.Context, f ferry.JobFilter) ([]*ferry.Job, string, error) {
	key, err := storedoc.DecodeCursor("jobs", f.After, 2)
	if err != nil {
		return nil, "", err
	}
	q := `SELECT id, created_at, doc FROM jobs WHERE 1`
	var args []any
	if key != nil {
		at, err := strconv.ParseInt(key[0], 10, 64)
		if err != nil {
			return nil, "", fmt.Errorf("bad page cursor %q: %w", f.After, ferry.ErrInvalid)
		}
		q += ` AND (created_at < ? OR (created_at = ? AND id < ?))`
		args = append(args, at, at, key[1])
	}
	if f.SourceServerID != "" {
		q += ` AND id IN (SELECT job_id FROM job_servers WHERE server_id = ?)`
		args = append(args, f.SourceServerID)
	}
	if f.Status != "" {
		q += ` AND status = ?`
		args = append(args, string(f.Status))
	}
	limit := ferry.PageLimit(f.Limit)
	q += ` ORDER BY created_at DESC, id DESC LIMIT ?`
	rows, err := s.rdb.QueryContext(ctx, q, append(args, limit+1)...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var (
		out  []*ferry.Job
		keys [][2]string
	)
	for rows.Next() {
		var (
			id  string
			at  int64
			doc []byte
		)
		if err := rows.Scan(&id, &at, &doc); err != nil {
			return nil, "", err
		}
		j, err := storedoc.Decode[ferry.Job](doc)
		if err != nil {
			return nil, "", err
		}
		out = append(out, j)
		keys = append(keys, [2]string{strconv.FormatInt(at, 10), id})
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = storedoc.EncodeCursor("jobs", keys[limit-1][0], keys[limit-1][1])
	}
	return out, next, nil
}

// AppendJobLog adds an entry to a job's log. A missing job is an error
// wrapping ferry.ErrNotFound.
func (s *Store) AppendJobLog(ctx context.Context, item ferry.JobLogItem) error {
	doc, err := storedoc.Encode(&item)
	if err != nil {
		return fmt.Errorf("sqlite: append job log %s: %w", item.JobID, err)
	}
	err = s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if err := jobExists(ctx, tx, item.JobID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO job_log (job_id, doc) VALUES (?, ?)`, item.JobID, string(doc))
		return err
	})
	return unwrap("append job log "+item.JobID, err)
}

// JobLog returns a job's log in the order it was written, or an error
// wrapping ferry.ErrNotFound for a missing job.
func (s *Store) JobLog(ctx context.Context, jobID string) ([]ferry.JobLogItem, error) {
	v, err := s.jobLog(ctx, jobID)
	return v, unwrap("get job log "+jobID, err)
}

func (s *Store) jobLog(ctx context.Context, jobID string) ([]ferry.JobLogItem, error) {
	// One read transaction, so the job check and the log agree.
	tx, err := s.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	if err := jobExists(ctx, tx, jobID); err != nil {
		return nil, err
	}
	rows, err := tx.QueryContext(ctx, `SELECT doc FROM job_log WHERE job_id = ? ORDER BY seq`, jobID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ferry.JobLogItem
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, err
		}
		it, err := storedoc.Decode[ferry.JobLogItem](doc)
		if err != nil {
			return nil, err
		}
		out = append(out, *it)
	}
	return out, rows.Err()
}

func jobExists(ctx context.Context, q querier, id string) error {
	var one int
	err := q.QueryRowContext(ctx, `SELECT 1 FROM jobs WHERE id = ?`, id).Scan(&one)
	if err == sql.ErrNoRows {
		return fmt.Errorf("job %s: %w", id, ferry.ErrNotFound)
	}
	return err
}
