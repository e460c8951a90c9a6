package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// maxGroup bounds how many writes share one transaction. On a quiet disk
// the commit's fsync takes about 1.5 ms and a few hundred writes would
// already spread it thin. But the metadata store shares its file system
// with the replica's journals, and with 10,000 agents writing there an
// fsync waits for the file system's journal commit, which waits for their
// data: seconds, not milliseconds. A group must then take everything that
// queued meanwhile, or the queue outgrows what one commit a second drains
// and every write, an operator's included, waits minutes. A member waits
// for the group's CPU too (some 200 us per server update on a busy 2-core
// machine, so a full group is under a second), which bounds it still.
const maxGroup = 4096

// ErrClosed is returned, wrapped, by a write made after Close.
var ErrClosed = errors.New("store closed")

// The states of a writeReq. Only the transitions from reqQueued are
// contested, by the writer and the waiting caller, so both use
// CompareAndSwap: whoever moves the request on decides its fate.
const (
	reqQueued  int32 = iota
	reqStarted       // the writer runs fn: the caller waits for the result
	reqDropped       // fn never runs: the caller's ctx ended first
)

// writeReq is one caller's write waiting for the writer goroutine.
type writeReq struct {
	ctx   context.Context
	fn    func(ctx context.Context, tx *sql.Tx) error
	state atomic.Int32
	// done receives the result once; it is buffered so that the writer
	// never waits for a caller.
	done chan writeResult

	// Kept by the writer while the request's group runs.
	err      error // fn's error
	panicVal any   // what fn panicked with, or nil
}

type writeResult struct {
	err      error
	panicVal any
}

// write runs fn atomically in a write transaction and returns once it is
// committed (on disk, with synchronous=FULL) or has failed. If fn returns
// an error, none of its changes are kept and that error is returned as it
// is; other errors are wrapped.
//
// fn runs on the writer goroutine, possibly in one transaction with other
// callers' writes (see writer), and must run every statement with the
// context it is given, never the caller's: a statement whose context ends
// is interrupted, which can roll back the whole transaction and with it
// the other callers' work. Call sites name that parameter ctx, shadowing
// the caller's. fn must return the first statement error it gets, as such
// an error can have ended the transaction, and it may run again, in a
// transaction of its own, if another write in its group broke the group's
// transaction; so it must set its results afresh on every run.
//
// If ctx ends before fn has started, fn never runs and write returns
// ctx.Err(); once fn has started, write waits for the outcome, so that it
// never reports failure for a write that was committed.
func (s *Store) write(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := &writeReq{ctx: ctx, fn: fn, done: make(chan writeResult, 1)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.queue = append(s.queue, r)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
	var res writeResult
	select {
	case res = <-r.done:
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqQueued, reqDropped) {
			return ctx.Err()
		}
		res = <-r.done // fn started: wait for the commit
	}
	if res.panicVal != nil {
		// Raise fn's panic in the caller's goroutine, where it was raised
		// before writes were grouped; the transaction is already cleaned up.
		panic(res.panicVal)
	}
	return res.err
}

// claim marks r started and reports whether the writer is to run it; it
// drops r instead if its caller's ctx has ended, or the caller dropped it.
func (r *writeReq) claim() bool {
	if err := r.ctx.Err(); err != nil {
		if r.state.CompareAndSwap(reqQueued, reqDropped) {
			r.done <- writeResult{err: err}
		}
		return false
	}
	return r.state.CompareAndSwap(reqQueued, reqStarted)
}

// finish hands a claimed request its result.
func (r *writeReq) finish(err error) {
	r.done <- writeResult{err: err, panicVal: r.panicVal}
}

// errPanicked stands for a panic in fn, which finish hands to the caller.
var errPanicked = errors.New("write function panicked")

// run runs r.fn in tx, turning a panic into an error so that the writer
// goroutine survives it and the transaction is rolled back.
func (r *writeReq) run(tx *sql.Tx) (err error) {
	r.panicVal = nil
	defer func() {
		if v := recover(); v != nil {
			r.panicVal = v
			err = errPanicked
		}
	}()
	// Keep the caller's values (for tracing, say) but not its cancellation.
	return r.fn(context.WithoutCancel(r.ctx), tx)
}

// writer is the goroutine that owns the write connection, started by
// Open and ended by Close. It takes every queued write (up to maxGroup)
// and runs them in one transaction: they then share one commit and one
// fsync instead of paying one each in turn, so that hundreds of writes a
// second do not queue behind the disk. Writes queued when Close is called
// still run; Close waits for them.
func (s *Store) writer() {
	defer close(s.stopped)
	var batch []*writeReq
	for {
		s.mu.Lock()
		n := min(len(s.queue), maxGroup)
		batch = append(batch[:0], s.queue[:n]...)
		m := copy(s.queue, s.queue[n:])
		clear(s.queue[m:])
		s.queue = s.queue[:m]
		closed := s.closed
		s.mu.Unlock()
		if n == 0 {
			if closed {
				return
			}
			<-s.wake
			continue
		}
		s.runGroup(batch)
		clear(batch)
	}
}

// runAlone runs one claimed request in a transaction of its own, as
// writes ran before they were grouped.
func (s *Store) runAlone(r *writeReq) error {
	ctx := context.Background()
	t0 := time.Now()
	defer func() { s.groupT.Add(int64(time.Since(t0))) }()
	s.writes.Add(1)
	tx, err := s.db.BeginTx(ctx, nil) // BEGIN IMMEDIATE (see dsn)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := r.run(tx); err != nil {
		tx.Rollback()
		return err
	}
	return s.commit(tx)
}

// commit commits tx and counts it and its time.
func (s *Store) commit(tx *sql.Tx) error {
	s.commits.Add(1)
	t0 := time.Now()
	err := tx.Commit()
	s.commitT.Add(int64(time.Since(t0)))
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// runGroup runs the requests of batch in one transaction, each inside a
// savepoint so that a failing one is undone alone, commits once and hands
// each its result: its own error, or the commit's outcome.
//
// A statement error such as SQLITE_FULL or SQLITE_IOERR can roll back the
// whole transaction. The statements after it would then each commit on
// their own, so the group must not go on: a savepoint only exists inside
// the transaction that made it, and if rolling back to or releasing one
// fails, runGroup rolls back and runs the group's requests again one
// transaction each (the one that failed keeps its error).
func (s *Store) runGroup(batch []*writeReq) {
	if len(batch) == 1 {
		// Nothing to share: skip the savepoint, as before grouping.
		if r := batch[0]; r.claim() {
			r.finish(s.runAlone(r))
		}
		return
	}
	ctx := context.Background()
	t0 := time.Now()
	defer func() { s.groupT.Add(int64(time.Since(t0))) }()
	tx, err := s.db.BeginTx(ctx, nil) // BEGIN IMMEDIATE (see dsn)
	if err != nil {
		err = fmt.Errorf("begin: %w", err)
		for _, r := range batch {
			if r.claim() {
				r.finish(err)
			}
		}
		return
	}
	ran := make([]*writeReq, 0, len(batch))
	for i, r := range batch {
		if !r.claim() {
			continue
		}
		if !s.runSaved(ctx, tx, r) {
			tx.Rollback()
			if r.err != nil {
				r.finish(r.err)
			} else {
				ran = append(ran, r)
			}
			s.rerun(ran, batch[i+1:])
			return
		}
		ran = append(ran, r)
	}
	s.writes.Add(int64(len(ran)))
	committed := false
	for _, r := range ran {
		if r.err == nil {
			committed = true
			break
		}
	}
	var commitErr error
	if committed {
		commitErr = s.commit(tx)
	} else {
		tx.Rollback()
	}
	for _, r := range ran {
		if r.err != nil {
			r.finish(r.err)
		} else {
			r.finish(commitErr)
		}
	}
}

// runSaved runs r.fn inside a savepoint of tx, leaving fn's error in
// r.err, and reports whether tx is still whole: false if the savepoint
// could not be made, rolled back to or released.
func (s *Store) runSaved(ctx context.Context, tx *sql.Tx, r *writeReq) bool {
	r.err = nil
	// One name serves: each savepoint is released before the next is made.
	if _, err := tx.ExecContext(ctx, `SAVEPOINT w`); err != nil {
		return false
	}
	if r.err = r.run(tx); r.err != nil {
		if _, err := tx.ExecContext(ctx, `ROLLBACK TO w`); err != nil {
			return false
		}
	}
	_, err := tx.ExecContext(ctx, `RELEASE w`)
	return err == nil
}

// rerun runs, each in a transaction of its own, the requests of a group
// whose transaction broke: those that ran in it (claimed already, their
// work rolled back; a failure there may have depended on that work) and
// those it had not reached yet.
func (s *Store) rerun(ran, rest []*writeReq) {
	for _, r := range ran {
		r.finish(s.runAlone(r))
	}
	for _, r := range rest {
		if r.claim() {
			r.finish(s.runAlone(r))
		}
	}
}
