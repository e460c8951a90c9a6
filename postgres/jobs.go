package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/internal/storedoc"
	"github.com/jackc/pgx/v5"
)

var jobs = &kind[ferry.Job]{
	name:  "job",
	table: "jobs",
	id:    func(j *ferry.Job) string { return j.ID },
	cols: func(j *ferry.Job) ([]string, []any) {
		return []string{"created_at", "status"}, []any{storedoc.UTC(j.CreatedAt), string(j.Status)}
	},
}

// CreateJob adds a job. A duplicate id is an error wrapping
// ferry.ErrConflict.
func (s *Store) CreateJob(ctx context.Context, j *ferry.Job) error {
	return unwrap("create job "+j.ID, jobs.create(ctx, s, j))
}

// Job returns a job by id, or an error wrapping ferry.ErrNotFound.
func (s *Store) Job(ctx context.Context, id string) (*ferry.Job, error) {
	v, err := jobs.get(ctx, s.pool, id, false)
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
	w := &where{}
	if key != nil {
		at, err := time.Parse(time.RFC3339Nano, key[0])
		if err != nil {
			return nil, "", fmt.Errorf("bad page cursor %q: %w", f.After, ferry.ErrInvalid)
		}
		w.add("(created_at, id) < ($?, $?)", at, key[1])
	}
	if f.SourceServerID != "" {
		w.add("doc->'participating_servers' @> jsonb_build_array(jsonb_build_object('source_server_id', $?::text))", f.SourceServerID)
	}
	if f.Status != "" {
		w.add("status = $?", string(f.Status))
	}
	limit := ferry.PageLimit(f.Limit)
	q := `SELECT id, created_at, doc FROM jobs` + w.sql() + fmt.Sprintf(` ORDER BY created_at DESC, id DESC LIMIT %d`, limit+1)
	rows, err := s.pool.Query(ctx, q, w.args...)
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
			at  time.Time
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
		keys = append(keys, [2]string{at.UTC().Format(time.RFC3339Nano), id})
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
		return fmt.Errorf("postgres: append job log %s: %w", item.JobID, err)
	}
	// The insert takes its job_id from the job row, so a missing job
	// inserts nothing, with no race against a concurrent delete.
	tag, err := s.pool.Exec(ctx, `INSERT INTO job_log (job_id, doc) SELECT id, $2::jsonb FROM jobs WHERE id = $1`, item.JobID, string(doc))
	if err != nil {
		return fmt.Errorf("postgres: append job log %s: %w", item.JobID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("postgres: append job log %s: job %s: %w", item.JobID, item.JobID, ferry.ErrNotFound)
	}
	return nil
}

// JobLog returns a job's log in the order it was written, or an error
// wrapping ferry.ErrNotFound for a missing job.
func (s *Store) JobLog(ctx context.Context, jobID string) ([]ferry.JobLogItem, error) {
	v, err := s.jobLog(ctx, jobID)
	return v, unwrap("get job log "+jobID, err)
}

func (s *Store) jobLog(ctx context.Context, jobID string) ([]ferry.JobLogItem, error) {
	// One snapshot, so the job check and the log agree.
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx)
	var one int
	if err := tx.QueryRow(ctx, `SELECT 1 FROM jobs WHERE id = $1`, jobID).Scan(&one); errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("job %s: %w", jobID, ferry.ErrNotFound)
	} else if err != nil {
		return nil, err
	}
	rows, err := tx.Query(ctx, `SELECT doc FROM job_log WHERE job_id = $1 ORDER BY seq`, jobID)
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
