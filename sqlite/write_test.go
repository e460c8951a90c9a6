package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

// Tests of group commit (write.go). They are inside the package to hold
// the writer, watch its queue and count its commits, so that a group's
// members are known rather than left to timing.

const hang = 20 * time.Second // how long a test waits before calling it a hang

func openTest(t *testing.T, servers ...string) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ferry.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, id := range servers {
		srv := &ferry.SourceServer{ID: id, Hostname: "h-" + id, Disks: []ferry.Disk{{Name: "vda"}}}
		if err := s.CreateServer(t.Context(), srv); err != nil {
			t.Fatal(err)
		}
	}
	return s, path
}

// queued returns how many writes wait for the writer.
func (s *Store) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// waitQueued waits until n writes wait for the writer.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(hang)
	for s.queued() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d writes queued, want %d", s.queued(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// hold starts a write that keeps the writer busy until release is called,
// so that the writes made meanwhile queue up and then run as one group.
func hold(t *testing.T, s *Store) (release func()) {
	t.Helper()
	started, unblock := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.write(context.Background(), func(ctx context.Context, tx *sql.Tx) error {
			close(started)
			<-unblock
			return nil
		})
	}()
	recv(t, started, "holding write to start")
	var once sync.Once
	release = func() {
		once.Do(func() {
			close(unblock)
			if err := recvErr(t, done, "holding write"); err != nil {
				t.Errorf("holding write: %v", err)
			}
		})
	}
	t.Cleanup(release)
	return release
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(hang):
		t.Fatalf("%s: no answer after %v", what, hang)
		panic("unreachable")
	}
}

func recvErr(t *testing.T, ch <-chan error, what string) error {
	t.Helper()
	return recv(t, ch, what)
}

// async runs f in a goroutine and returns the channel its error arrives on.
func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// add returns a call that adds n to server id's first disk's SentBytes.
func add(s *Store, ctx context.Context, id string, n int64) func() error {
	return func() error {
		_, err := s.UpdateServer(ctx, id, func(v *ferry.SourceServer) error {
			v.Disks[0].SentBytes += n
			return nil
		})
		return err
	}
}

// sent reads server id's counter through the read pool; -1 if it cannot
// (which fails the test, from any goroutine).
func sent(t *testing.T, s *Store, id string) int64 {
	t.Helper()
	v, err := servers.get(t.Context(), s.rdb, id)
	if err != nil {
		t.Errorf("read %s: %v", id, err)
		return -1
	}
	return v.Disks[0].SentBytes
}

// auditRows counts audit events by actor, through the read pool.
func auditRows(t *testing.T, s *Store, actor string) int {
	t.Helper()
	var n int
	if err := s.rdb.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM audit WHERE actor = ?`, actor).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// insertX is a statement a raw write runs so that its changes can be
// looked for afterwards.
const insertX = `INSERT INTO audit (time, actor, outcome, doc) VALUES (0, 'x', '', '{}')`

func TestConcurrentUpdateServer(t *testing.T) {
	const (
		goroutines = 64
		calls      = 25 // per goroutine
		failEvery  = 5  // every fifth call's callback fails
	)
	errSkip := errors.New("skip")
	for _, tc := range []struct {
		name    string
		servers int // goroutine g updates server g % servers
	}{
		{"distinct", goroutines},
		{"shared", 4},
		{"one", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ids []string
			for i := range tc.servers {
				ids = append(ids, fmt.Sprint("s", i))
			}
			s, path := openTest(t, ids...)
			commits := s.commits.Load()
			var (
				mu   sync.Mutex
				seen = map[string][]int64{} // counter values returned, per server
				wg   sync.WaitGroup
			)
			for g := range goroutines {
				wg.Go(func() {
					id := ids[g%tc.servers]
					for c := range calls {
						fail := c%failEvery == failEvery-1
						v, err := s.UpdateServer(t.Context(), id, func(v *ferry.SourceServer) error {
							v.Disks[0].SentBytes++
							if fail {
								return errSkip
							}
							return nil
						})
						switch {
						case fail && err != errSkip:
							t.Errorf("failing update of %s: %v, want the callback's error as it is", id, err)
						case fail && v != nil:
							t.Errorf("failing update of %s returned %+v", id, v)
						case !fail && err != nil:
							t.Errorf("update %s: %v", id, err)
						case !fail:
							mu.Lock()
							seen[id] = append(seen[id], v.Disks[0].SentBytes)
							mu.Unlock()
						}
					}
				})
			}
			wg.Wait()
			perServer := int64(goroutines / tc.servers * (calls - calls/failEvery))
			for _, id := range ids {
				if got := sent(t, s, id); got != perServer {
					t.Errorf("server %s counter %d, want %d", id, got, perServer)
				}
				// Each update saw the one before it: the values returned
				// are 1..n, each once.
				vals := seen[id]
				sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
				for i, v := range vals {
					if v != int64(i+1) {
						t.Fatalf("server %s: updates returned counters %v, want 1..%d each once", id, vals, perServer)
					}
				}
			}
			t.Logf("%d updates in %d transactions", goroutines*calls, s.commits.Load()-commits)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for _, id := range ids {
				if got := sent(t, s, id); got != perServer {
					t.Errorf("after reopen: server %s counter %d, want %d", id, got, perServer)
				}
			}
		})
	}
}

// xPanic carries a panic a write raised again in its caller.
type xPanic struct{ v any }

func (p xPanic) Error() string { return fmt.Sprint("panic: ", p.v) }

// TestGroupIsolation runs a group of three writes, A, X and C, where X
// fails in various ways: A and C must be applied exactly once and X not at
// all, and X's caller must get X's error.
func TestGroupIsolation(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name string
		x    func(s *Store) error // X's call
		// check checks X's error.
		check func(t *testing.T, err error)
		// commits is how many transactions the group takes, or -1 when
		// it breaks and its writes run again one by one.
		commits int64
	}{
		{
			name: "callback error",
			x: func(s *Store) error {
				_, err := s.UpdateServer(context.Background(), "a", func(v *ferry.SourceServer) error {
					v.Disks[0].SentBytes += 100
					return boom
				})
				return err
			},
			check: func(t *testing.T, err error) {
				if err != boom {
					t.Errorf("X: %v, want the callback's error as it is", err)
				}
			},
			commits: 1,
		},
		{
			name: "not found",
			x: func(s *Store) error {
				_, err := s.UpdateServer(context.Background(), "missing", func(v *ferry.SourceServer) error { return nil })
				return err
			},
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ferry.ErrNotFound) {
					t.Errorf("X: %v, want ErrNotFound", err)
				}
			},
			commits: 1,
		},
		{
			name: "statement error",
			x: func(s *Store) error {
				return s.write(context.Background(), func(ctx context.Context, tx *sql.Tx) error {
					if _, err := tx.ExecContext(ctx, insertX); err != nil {
						return err
					}
					_, err := tx.ExecContext(ctx, `INSERT INTO audit (time, actor, outcome, doc) VALUES (0, NULL, '', '{}')`)
					return err
				})
			},
			check: func(t *testing.T, err error) {
				if err == nil {
					t.Errorf("X: no error, want a NOT NULL constraint error")
				}
			},
			commits: 1,
		},
		{
			name: "panic",
			x: func(s *Store) (err error) {
				defer func() {
					if v := recover(); v != nil {
						err = xPanic{v}
					}
				}()
				return s.write(context.Background(), func(ctx context.Context, tx *sql.Tx) error {
					if _, err := tx.ExecContext(ctx, insertX); err != nil {
						return err
					}
					panic("x panicked")
				})
			},
			check: func(t *testing.T, err error) {
				if p, ok := err.(xPanic); !ok || p.v != "x panicked" {
					t.Errorf("X: %v, want the panic raised again in the caller", err)
				}
			},
			commits: 1,
		},
		{
			// As SQLITE_FULL or an I/O error can: the transaction ends
			// under the group, which must not go on outside it.
			name: "transaction rolled back, error returned",
			x: func(s *Store) error {
				return s.write(context.Background(), func(ctx context.Context, tx *sql.Tx) error {
					if _, err := tx.ExecContext(ctx, insertX); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, `ROLLBACK`); err != nil {
						return err
					}
					return boom
				})
			},
			check: func(t *testing.T, err error) {
				if err != boom {
					t.Errorf("X: %v, want boom", err)
				}
			},
			commits: -1,
		},
		{
			name: "transaction rolled back, nil returned",
			x: func(s *Store) error {
				return s.write(context.Background(), func(ctx context.Context, tx *sql.Tx) error {
					_, err := tx.ExecContext(ctx, `ROLLBACK`)
					return err
				})
			},
			check: func(t *testing.T, err error) {
				if err == nil {
					t.Errorf("X: no error, but its transaction was rolled back")
				}
			},
			commits: -1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openTest(t, "a", "c")
			ctx := t.Context()
			release := hold(t, s)
			a := async(add(s, ctx, "a", 1))
			waitQueued(t, s, 1)
			x := async(func() error { return tc.x(s) })
			waitQueued(t, s, 2)
			c := async(add(s, ctx, "c", 1))
			waitQueued(t, s, 3)
			commits := s.commits.Load()
			release() // the holding write commits; then A, X and C run as one group
			if err := recvErr(t, a, "A"); err != nil {
				t.Errorf("A: %v", err)
			}
			tc.check(t, recvErr(t, x, "X"))
			if err := recvErr(t, c, "C"); err != nil {
				t.Errorf("C: %v", err)
			}
			if got := s.commits.Load() - commits - 1; tc.commits >= 0 && got != tc.commits {
				t.Errorf("A, X and C took %d transactions, want %d", got, tc.commits)
			}
			if got := sent(t, s, "a"); got != 1 {
				t.Errorf("server a counter %d, want 1 (A once, X not at all)", got)
			}
			if got := sent(t, s, "c"); got != 1 {
				t.Errorf("server c counter %d, want 1", got)
			}
			if n := auditRows(t, s, "x"); n != 0 {
				t.Errorf("X's insert is visible (%d rows)", n)
			}
			// The writer still works.
			if err := add(s, ctx, "c", 1)(); err != nil || sent(t, s, "c") != 2 {
				t.Errorf("update after the group: %v, counter %d, want 2", err, sent(t, s, "c"))
			}
		})
	}
}

// TestWriteCancel cancels X's context at several points while A and C are
// in X's group.
func TestWriteCancel(t *testing.T) {
	for _, tc := range []struct {
		name string
		when string // "before" the call, while "queued", or while its fn is "running"
		// wantErr is X's error; applied, whether X's change is kept.
		wantErr error
		applied bool
	}{
		{"cancelled before the call", "before", context.Canceled, false},
		{"cancelled while queued", "queued", context.Canceled, false},
		{"cancelled while its fn runs", "running", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openTest(t, "x", "other")
			ctx := t.Context()
			xctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var calls atomic.Int32
			xcall := func() error {
				_, err := s.UpdateServer(xctx, "x", func(v *ferry.SourceServer) error {
					calls.Add(1)
					if tc.when == "running" {
						// The statements after this must not be
						// interrupted: the group would be rolled back.
						cancel()
					}
					v.Disks[0].SentBytes++
					return nil
				})
				return err
			}
			release := hold(t, s)
			a := async(add(s, ctx, "other", 1))
			waitQueued(t, s, 1)
			n := 1
			if tc.when == "before" {
				cancel()
			}
			x := async(xcall)
			if tc.when != "before" {
				n++
				waitQueued(t, s, n)
			}
			c := async(add(s, ctx, "other", 1))
			waitQueued(t, s, n+1)
			if tc.when == "before" || tc.when == "queued" {
				cancel()
				// X's caller has its answer at once, without waiting for
				// the writer, which is still held.
				if err := recvErr(t, x, "X"); !errors.Is(err, tc.wantErr) {
					t.Errorf("X: %v, want %v", err, tc.wantErr)
				}
				release()
			} else {
				release()
				if err := recvErr(t, x, "X"); !errors.Is(err, tc.wantErr) {
					t.Errorf("X: %v, want %v", err, tc.wantErr)
				}
			}
			for _, ch := range []<-chan error{a, c} {
				if err := recvErr(t, ch, "A or C"); err != nil {
					t.Errorf("A or C: %v", err)
				}
			}
			if got := sent(t, s, "other"); got != 2 {
				t.Errorf("A and C's counter %d, want 2", got)
			}
			want := int64(0)
			if tc.applied {
				want = 1
			}
			if got := sent(t, s, "x"); got != want {
				t.Errorf("X's counter %d, want %d", got, want)
			}
			if got := calls.Load(); int64(got) != want {
				t.Errorf("X's callback ran %d times, want %d", got, want)
			}
		})
	}
}

// TestWriteVisibleAndDurable checks that a write that returned can be read
// through the read pool at once, and is there after a reopen.
func TestWriteVisibleAndDurable(t *testing.T) {
	const (
		goroutines = 16
		calls      = 20
	)
	ids := []string{"s0", "s1", "s2", "s3"}
	s, path := openTest(t, ids...)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			id := ids[g%len(ids)]
			for range calls {
				v, err := s.UpdateServer(t.Context(), id, func(v *ferry.SourceServer) error {
					v.Disks[0].SentBytes++
					return nil
				})
				if err != nil {
					t.Errorf("update %s: %v", id, err)
					return
				}
				if got := sent(t, s, id); got < v.Disks[0].SentBytes {
					t.Errorf("read of %s after an update to %d sees %d", id, v.Disks[0].SentBytes, got)
				}
				e := &ferry.AuditEvent{Time: time.Now(), Actor: "t", Outcome: "ok"}
				if err := s.AppendAudit(t.Context(), e); err != nil {
					t.Errorf("append audit: %v", err)
					return
				}
				var n int
				if err := s.rdb.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM audit WHERE id = ?`, e.ID).Scan(&n); err != nil || n != 1 {
					t.Errorf("audit event %d read back: %d rows, %v", e.ID, n, err)
				}
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, id := range ids {
		if got, want := sent(t, s, id), int64(goroutines/len(ids)*calls); got != want {
			t.Errorf("after reopen: %s counter %d, want %d", id, got, want)
		}
	}
	if got := auditRows(t, s, "t"); got != goroutines*calls {
		t.Errorf("after reopen: %d audit events, want %d", got, goroutines*calls)
	}
}

func TestCloseWithWritesInFlight(t *testing.T) {
	t.Run("queued writes run", func(t *testing.T) {
		s, path := openTest(t, "a")
		ctx := t.Context()
		release := hold(t, s)
		a := async(add(s, ctx, "a", 1))
		waitQueued(t, s, 1)
		closed := async(s.Close)
		for deadline := time.Now().Add(hang); ; time.Sleep(time.Millisecond) {
			s.mu.Lock()
			c := s.closed
			s.mu.Unlock()
			if c {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("Close did not start")
			}
		}
		if err := add(s, ctx, "a", 10)(); !errors.Is(err, ErrClosed) {
			t.Errorf("write during Close: %v, want ErrClosed", err)
		}
		release()
		if err := recvErr(t, a, "queued write"); err != nil {
			t.Errorf("queued write: %v", err)
		}
		if err := recvErr(t, closed, "Close"); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second close: %v", err)
		}
		if err := add(s, ctx, "a", 10)(); !errors.Is(err, ErrClosed) {
			t.Errorf("write after Close: %v, want ErrClosed", err)
		}
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := sent(t, s, "a"); got != 1 {
			t.Errorf("after reopen: counter %d, want 1", got)
		}
	})
	t.Run("racing writers", func(t *testing.T) {
		const goroutines = 32
		s, path := openTest(t, "a")
		var ok atomic.Int64
		started := make(chan struct{}, goroutines)
		var wg sync.WaitGroup
		for range goroutines {
			wg.Go(func() {
				started <- struct{}{}
				for {
					err := add(s, context.Background(), "a", 1)()
					if err != nil {
						if !errors.Is(err, ErrClosed) {
							t.Errorf("update: %v, want nil or ErrClosed", err)
						}
						return
					}
					ok.Add(1)
				}
			})
		}
		for range goroutines {
			recv(t, started, "writers to start")
		}
		for ok.Load() < 100 {
			time.Sleep(time.Millisecond)
		}
		if err := recvErr(t, async(s.Close), "Close"); err != nil {
			t.Errorf("close: %v", err)
		}
		recv(t, async(func() error { wg.Wait(); return nil }), "writers to return")
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := sent(t, s, "a"); got != ok.Load() {
			t.Errorf("after reopen: counter %d, want %d (the updates that returned nil)", got, ok.Load())
		}
	})
}

// TestWriterStats: every write is counted once, groups share commits, and
// the commit time is part of the busy time.
func TestWriterStats(t *testing.T) {
	s, _ := openTest(t, "a", "b")
	before := s.WriterStats()
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := []string{"a", "b"}[i%2]
			if _, err := s.UpdateServer(t.Context(), id, func(v *ferry.SourceServer) error { v.Disks[0].ReplicatedBytes++; return nil }); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	st := s.WriterStats()
	if w := st.Writes - before.Writes; w != n {
		t.Errorf("%d writes counted, want %d", w, n)
	}
	if c := st.Commits - before.Commits; c < 1 || c > n {
		t.Errorf("%d commits for %d writes", c, n)
	}
	if st.Commit <= 0 || st.Busy < st.Commit || st.Queued != 0 {
		t.Errorf("commit time %v, busy %v, queued %d: want 0 < commit <= busy, nothing queued", st.Commit, st.Busy, st.Queued)
	}
}
