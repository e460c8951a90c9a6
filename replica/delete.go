package replica

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DeleteDisk removes disk id and everything that is only its: snapshots,
// block maps and journal. Chunks it shared with other disks stay; the
// rest become garbage for the next GC. A disk with open readers (an
// instance running from one of its snapshots) is refused with an error
// wrapping ErrBusy; writes and snapshots still in progress on it fail
// with errors wrapping ErrNotFound or ErrClosed.
//
// The disk object goes first: from then on the disk does not exist, and
// if the process dies before the rest is gone, Open (or a CreateDisk of
// the same id) removes what is left.
func (s *Store) DeleteDisk(ctx context.Context, id string) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	d, ok := s.disks[id]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("delete disk %q: %w", id, ErrNotFound)
	}
	d.mu.Lock()
	readers := 0
	for _, n := range d.pins {
		readers += n
	}
	if readers > 0 {
		d.mu.Unlock()
		s.mu.Unlock()
		return fmt.Errorf("delete disk %q: %d open readers: %w", id, readers, ErrBusy)
	}
	d.deleted = true
	d.mu.Unlock()
	delete(s.disks, id)
	s.mu.Unlock()

	// No fold, snapshot or retention pass of the disk runs past this
	// point: each takes foldMu and then sees deleted.
	close(d.stop)
	d.foldMu.Lock()
	defer d.foldMu.Unlock()
	d.j.close()
	d.j.dropRefs()
	// GC lists and reads every map: it must not meet this disk's half
	// deleted.
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	if err := s.be.Delete(ctx, "disks/"+id); err != nil {
		return backendErr("delete disk "+id, err)
	}
	if err := s.removeLeftovers(ctx, id); err != nil {
		return fmt.Errorf("delete disk %q: %w", id, err)
	}
	return nil
}

// removeLeftovers deletes the snapshots, maps and journal of a disk that
// has no disk object (deleted, or never finished being created).
func (s *Store) removeLeftovers(ctx context.Context, id string) error {
	for _, prefix := range []string{"snapshots/" + id + "/", "maps/" + id + "/"} {
		var names []string
		if err := s.be.List(ctx, prefix, func(name string, _ int64) error {
			names = append(names, name)
			return nil
		}); err != nil {
			return backendErr("list "+prefix, err)
		}
		for _, name := range names {
			if err := s.be.Delete(ctx, name); err != nil && !errors.Is(err, ErrNotFound) {
				return backendErr("delete "+name, err)
			}
		}
	}
	if err := os.RemoveAll(filepath.Join(s.opts.Dir, "disks", id)); err != nil {
		return fmt.Errorf("remove journal: %w", err)
	}
	return nil
}

// finishDeletes removes what deletions interrupted by a crash left: maps,
// snapshots and journals of disks without a disk object. known holds the
// disks that exist.
func (s *Store) finishDeletes(ctx context.Context, known map[string]bool) error {
	orphans := map[string]bool{}
	for _, prefix := range []string{"snapshots/", "maps/"} {
		if err := s.be.List(ctx, prefix, func(name string, _ int64) error {
			rest := strings.TrimPrefix(name, prefix)
			if i := strings.IndexByte(rest, '/'); i > 0 && !known[rest[:i]] {
				orphans[rest[:i]] = true
			}
			return nil
		}); err != nil {
			return backendErr("list "+prefix, err)
		}
	}
	ents, err := os.ReadDir(filepath.Join(s.opts.Dir, "disks"))
	if err != nil {
		return fmt.Errorf("list journals: %w", err)
	}
	for _, e := range ents {
		if e.IsDir() && !known[e.Name()] {
			orphans[e.Name()] = true
		}
	}
	for id := range orphans {
		s.opts.Logf("replica: removing what is left of deleted disk %s", id)
		if err := s.removeLeftovers(ctx, id); err != nil {
			return fmt.Errorf("finish deleting disk %s: %w", id, err)
		}
	}
	return nil
}
