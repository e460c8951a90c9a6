package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/ferrymigrate/ferry/replica/backend"
)

var _ backend.Batcher = (*Backend)(nil)

const (
	// batchMaxOpen bounds the unsynced temporary files a batch keeps open;
	// past it Put syncs them all (in parallel) before staging more.
	batchMaxOpen = 256
	// syncWorkers is how many fsyncs a batch runs at once. fsyncs that
	// overlap share the file system's journal commits, so many in flight
	// cost little more than one.
	syncWorkers = 64
)

// NewBatch returns a batch that writes each object to a temporary file
// without syncing it; Commit fsyncs the temporary files in parallel,
// renames them into place and fsyncs each directory that gained an entry
// once. A crash before Commit returns leaves every name with its old
// object or the complete new one: a temporary file is renamed only after
// its fsync, and Open removes leftovers.
func (b *Backend) NewBatch() backend.Batch { return &batch{b: b} }

type staged struct {
	name, tmp, dst string
	f              *os.File // open and unsynced, or nil once synced and closed
}

type batch struct {
	b      *Backend
	mu     sync.Mutex
	staged []*staged
	open   []*staged // unsynced files
	packs  []*packWriter
	done   bool
}

// putPacked appends a packed object to the batch's open pack, starting a
// new pack when it is full.
func (bt *batch) putPacked(name string, data []byte) error {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	if bt.done {
		return errors.New("put: batch already committed or aborted")
	}
	var w *packWriter
	if n := len(bt.packs); n > 0 && bt.packs[n-1].off < bt.b.pk.size {
		w = bt.packs[n-1]
	} else {
		nw, err := bt.b.pk.newWriter()
		if err != nil {
			return fmt.Errorf("put %s: %w", name, err)
		}
		bt.packs = append(bt.packs, nw)
		w = nw
	}
	return w.add(name, data, 0)
}

func (bt *batch) Put(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := bt.b.path(name)
	if err != nil {
		return err
	}
	if bt.b.pk.packed(name) {
		return bt.putPacked(name, data)
	}
	if err := bt.b.mkdirs(filepath.Dir(p)); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	tmp := bt.b.tmpPath()
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("put %s: create temporary file: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("put %s: write: %w", name, err)
	}
	st := &staged{name: name, tmp: tmp, dst: p, f: f}
	bt.mu.Lock()
	if bt.done {
		bt.mu.Unlock()
		f.Close()
		os.Remove(tmp)
		return errors.New("put: batch already committed or aborted")
	}
	bt.staged = append(bt.staged, st)
	bt.open = append(bt.open, st)
	var flush []*staged
	if len(bt.open) >= batchMaxOpen {
		flush, bt.open = bt.open, nil
	}
	bt.mu.Unlock()
	if flush != nil {
		return syncFiles(flush)
	}
	return nil
}

// syncFiles fsyncs and closes files in parallel.
func syncFiles(files []*staged) error {
	return parallel(len(files), func(i int) error {
		st := files[i]
		err := st.f.Sync()
		if cerr := st.f.Close(); err == nil {
			err = cerr
		}
		st.f = nil
		if err != nil {
			return fmt.Errorf("put %s: sync: %w", st.name, err)
		}
		return nil
	})
}

func (bt *batch) Commit(ctx context.Context) error {
	bt.mu.Lock()
	if bt.done {
		bt.mu.Unlock()
		return errors.New("commit: batch already committed or aborted")
	}
	bt.done = true
	open, all, packs := bt.open, bt.staged, bt.packs
	bt.open = nil
	bt.mu.Unlock()
	defer func() {
		for _, w := range packs {
			w.discard()
		}
	}()
	err := ctx.Err()
	for _, w := range packs {
		if err == nil {
			err = w.finish(true)
		}
	}
	if err == nil {
		// Packs and files are fsynced together: overlapping fsyncs share
		// the file system's journal commits.
		err = parallel(len(open)+len(packs), func(i int) error {
			if i < len(packs) {
				return packs[i].sync()
			}
			return syncFiles(open[i-len(packs) : i-len(packs)+1])
		})
	}
	if err != nil {
		cleanup(all)
		return err
	}
	dirs := map[string]bool{}
	var placed []*packWriter
	for _, w := range packs {
		dir, perr := w.place()
		if perr != nil {
			err = perr
			break
		}
		placed = append(placed, w)
		dirs[dir] = true
	}
	// A placed pack is complete and will be read at the next Open, so it
	// is installed even if a later step fails: the objects may be
	// visible, as the contract allows, and the index stays true to disk.
	defer func() {
		for _, w := range placed {
			bt.b.pk.install(w, 0)
		}
	}()
	if err != nil {
		cleanup(all)
		return err
	}
	for i, st := range all {
		if err != nil {
			cleanup(all[i:])
			return err
		}
		if rerr := os.Rename(st.tmp, st.dst); rerr != nil {
			os.Remove(st.tmp)
			err = fmt.Errorf("put %s: rename: %w", st.name, rerr)
			continue
		}
		dirs[filepath.Dir(st.dst)] = true
	}
	if err != nil {
		return err
	}
	list := make([]string, 0, len(dirs))
	for d := range dirs {
		list = append(list, d)
	}
	return parallel(len(list), func(i int) error { return syncDir(list[i]) })
}

func (bt *batch) Abort() {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	if bt.done {
		return
	}
	bt.done = true
	cleanup(bt.staged)
	for _, w := range bt.packs {
		w.discard()
	}
}

// cleanup closes and removes temporary files not renamed into place.
func cleanup(files []*staged) {
	for _, st := range files {
		if st.f != nil {
			st.f.Close()
			st.f = nil
		}
		os.Remove(st.tmp)
	}
}

// parallel runs fn(0..n-1) on up to syncWorkers goroutines and returns the
// first error.
func parallel(n int, fn func(i int) error) error {
	if n == 0 {
		return nil
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  int
	)
	for w := 0; w < min(n, syncWorkers); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return first
}
