package replica

import (
	"container/list"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// segFiles bounds the journal segments a store keeps open. Every disk has
// at least one segment, and a server with 10,000 agents would otherwise
// hold a descriptor per segment beside each agent's connection: more than
// a common open-file limit. Segments in use (an append, a sync, a read)
// are always open; idle ones stay open, least recently used closed first,
// until max are. A closed segment is opened again by its path, so one
// whose file is unlinked while readers still use it is held open (hold)
// until they are done.
type segFiles struct {
	mu     sync.Mutex
	max    int
	open   int
	idle   list.List // of *segment: open, no users, least recently used first
	opened int64     // segments opened again after being closed, for tests
}

// defaultMaxSegFiles leaves three quarters of the process's open-file limit
// to connections and everything else.
func defaultMaxSegFiles() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == unix.RLIM_INFINITY {
		return 4096
	}
	return max(16, int(min(lim.Cur, 1<<20)/4))
}

func newSegFiles(max int) *segFiles {
	if max <= 0 {
		max = defaultMaxSegFiles()
	}
	return &segFiles{max: max}
}

// add registers s with f, the file it was created or replayed with, as an
// idle open segment.
func (c *segFiles) add(s *segment, f *os.File) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.f = f
	c.open++
	s.elem = c.idle.PushBack(s)
	c.trimLocked()
}

// acquire returns s's file, opening it when it was closed; every acquire
// is paired with a release.
func (c *segFiles) acquire(s *segment) (*os.File, error) {
	c.mu.Lock()
	if s.f != nil {
		f := c.useLocked(s)
		c.mu.Unlock()
		return f, nil
	}
	if s.dead {
		c.mu.Unlock()
		return nil, fmt.Errorf("journal segment %s: closed", s.path)
	}
	c.mu.Unlock()
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open journal segment: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.f != nil { // another acquire opened it meanwhile
		f.Close()
	} else {
		s.f = f
		c.open++
		c.opened++
	}
	f = c.useLocked(s)
	c.trimLocked()
	return f, nil
}

func (c *segFiles) useLocked(s *segment) *os.File {
	if s.elem != nil {
		c.idle.Remove(s.elem)
		s.elem = nil
	}
	s.users++
	return s.f
}

// release ends a use begun by acquire.
func (c *segFiles) release(s *segment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.users--
	if s.users > 0 {
		return
	}
	if s.dead {
		c.closeLocked(s)
		return
	}
	s.elem = c.idle.PushBack(s)
	c.trimLocked()
}

// drop closes s for good (its file was removed or its journal closed), now
// when nobody uses it, else at the last release.
func (c *segFiles) drop(s *segment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.dead = true
	if s.users == 0 {
		if s.elem != nil {
			c.idle.Remove(s.elem)
			s.elem = nil
		}
		c.closeLocked(s)
	}
}

func (c *segFiles) closeLocked(s *segment) {
	if s.f != nil {
		s.f.Close()
		s.f = nil
		c.open--
	}
}

// trimLocked closes idle segments, oldest use first, while more than max
// are open.
func (c *segFiles) trimLocked() {
	for c.open > c.max {
		e := c.idle.Front()
		if e == nil {
			return
		}
		s := c.idle.Remove(e).(*segment)
		s.elem = nil
		c.closeLocked(s)
	}
}

// stats returns how many segments are open and how many were opened again.
func (c *segFiles) stats() (open int, reopened int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open, c.opened
}
