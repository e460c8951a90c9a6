package replica

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// syncer makes journal appends of many disks durable together. Each disk
// has its own journal and group commit, so a server with thousands of
// mostly idle agents asks for thousands of fdatasyncs a second, each a
// journal commit and a cache flush of the same file system; the device's
// flush rate then bounds every agent's acknowledgement latency. The
// syncer collects the syncs asked for while one is running: a few are
// fdatasynced in parallel, as before; many are served by one syncfs of
// the staging file system, which makes every file on it durable at once.
//
// syncfs also writes back whatever else is dirty on that file system, so
// it is used only when enough journals wait that it replaces many
// flushes; a handful of busy disks keep their own fdatasyncs.
type syncer struct {
	fs  *os.File // on the staging file system: the syncfs target
	dev uint64   // its device: syncfs covers only files on it
	// batchAt is how many waiting syncs make one syncfs worth it.
	batchAt int

	mu      sync.Mutex
	cond    *sync.Cond
	waiting []*syncReq
	closed  bool
	done    chan struct{}

	// Counters for tests and figures; guarded by mu.
	fdatasyncs, syncfss int
}

type syncReq struct {
	f   *os.File
	err error
	ok  chan struct{}
}

// syncBatchAt is the default batchAt: below it, parallel fdatasyncs cost
// less than the write-back of unrelated dirty data a syncfs may add.
const syncBatchAt = 16

func newSyncer(dir string, batchAt int) (*syncer, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, err
	}
	s := &syncer{fs: f, dev: st.Dev, batchAt: batchAt, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	go s.run()
	return s, nil
}

// covers reports whether dir is on the syncer's file system, so that its
// files may be synced by it.
func (s *syncer) covers(dir string) bool {
	var st unix.Stat_t
	return unix.Stat(dir, &st) == nil && st.Dev == s.dev
}

// sync makes f's written data durable. f must be on the syncer's file
// system (covers).
func (s *syncer) sync(f *os.File) error {
	r := &syncReq{f: f, ok: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return unix.Fdatasync(int(f.Fd()))
	}
	s.waiting = append(s.waiting, r)
	s.cond.Signal()
	s.mu.Unlock()
	<-r.ok
	return r.err
}

func (s *syncer) run() {
	defer close(s.done)
	s.mu.Lock()
	for {
		for len(s.waiting) == 0 && !s.closed {
			s.cond.Wait()
		}
		batch := s.waiting
		s.waiting = nil
		if len(batch) == 0 {
			s.mu.Unlock()
			return
		}
		many := len(batch) >= s.batchAt
		if many {
			s.syncfss++
		} else {
			s.fdatasyncs += len(batch)
		}
		s.mu.Unlock()
		if many {
			// Everything these journals wrote before asking is on the
			// file system: one syncfs makes all of it durable, and reports
			// a write-back error of any file on it, which fails them all
			// (the journals then truncate and retry: never a false ack).
			err := unix.Syncfs(int(s.fs.Fd()))
			for _, r := range batch {
				r.err = err
				close(r.ok)
			}
		} else {
			var wg sync.WaitGroup
			for _, r := range batch {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r.err = unix.Fdatasync(int(r.f.Fd()))
					close(r.ok)
				}()
			}
			wg.Wait()
		}
		s.mu.Lock()
	}
}

// close stops the syncer once the syncs asked for are done; later syncs
// are plain fdatasyncs.
func (s *syncer) close() {
	s.mu.Lock()
	s.closed = true
	s.cond.Signal()
	s.mu.Unlock()
	<-s.done
	s.fs.Close()
}
