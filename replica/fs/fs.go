// Package fs implements backend.Backend on a local file system directory.
//
// An object is one file under the root directory, named by its object
// name, unless its name has a prefix given to Packed: then it is kept in a
// pack file under root/.packs with many others (see packs.go and
// docs/storage.md). Put writes a temporary file under root/.tmp, fsyncs
// it, renames it into place and fsyncs the parent directory, so an object
// is either absent or complete after a crash at any instant. Leftover
// temporary files from a crash are removed by Open.
package fs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/ferrymigrate/ferry/replica/backend"
)

var _ backend.Backend = (*Backend)(nil)

const tmpDir = ".tmp"

// tmpShards is the number of subdirectories of tmpDir temporary files are
// spread over: many goroutines creating files in one directory contend on
// its lock (measured: creates cost 4× the CPU with one directory).
const tmpShards = 16

// tmpPath returns a new random temporary file name.
func (b *Backend) tmpPath() string {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	name := hex.EncodeToString(rnd[:])
	return filepath.Join(b.root, tmpDir, name[:1], name)
}

// ErrLocked is returned (wrapped) by Open when another process has the
// directory open: two would remove each other's temporary files and
// rewrite each other's packs.
var ErrLocked = errors.New("backend directory is in use by another process")

// lockFile is flocked by the process that has the directory open.
const lockFile = ".lock"

// Backend is a backend.Backend storing objects as files under a directory.
type Backend struct {
	root string
	dirs sync.Map // directory path -> struct{}: known to exist durably
	pk   *packs
	lock *os.File

	closeLock sync.Once
}

// Option changes how Open sets up a Backend.
type Option func(*options)

type options struct {
	packed   []string
	packSize int64
}

// Packed keeps new objects whose names start with one of prefixes in pack
// files: a batch of them is one file and one fsync, not one of each per
// object. Use it for many small objects written together (the replica
// store's chunks). Objects already in packs are read whatever the
// options, so a directory opened without Packed loses nothing.
func Packed(prefixes ...string) Option {
	return func(o *options) { o.packed = append(o.packed, prefixes...) }
}

// PackSize is the size at which a batch starts a new pack (default 64
// MiB); tests make it small to get many packs.
func PackSize(n int64) Option {
	return func(o *options) { o.packSize = n }
}

// Open returns a Backend rooted at dir, creating dir if needed and removing
// temporary files a crash may have left behind. Only one process may use a
// directory at a time.
func Open(dir string, opts ...Option) (*Backend, error) {
	o := options{packSize: defaultPackSize}
	for _, opt := range opts {
		opt(&o)
	}
	for _, pre := range o.packed {
		if !backend.ValidPrefix(pre) {
			return nil, fmt.Errorf("packed prefix %q is not an object name prefix", pre)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create backend directory: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("resolve backend directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(abs, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open backend %s: %w", abs, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open backend %s: %w", abs, ErrLocked)
	}
	b := &Backend{root: abs, lock: lock}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
		}
	}()
	tmp := filepath.Join(abs, tmpDir)
	if err := os.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("remove temporary files: %w", err)
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("create temporary directory: %w", err)
	}
	for i := range tmpShards {
		if err := os.Mkdir(filepath.Join(tmp, fmt.Sprintf("%x", i)), 0o700); err != nil {
			return nil, fmt.Errorf("create temporary directory: %w", err)
		}
	}
	if err := syncDir(abs); err != nil {
		return nil, err
	}
	b.dirs.Store(abs, struct{}{})
	pk, err := openPacks(b, o.packed, max(o.packSize, 1))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", abs, err)
	}
	b.pk = pk
	ok = true
	return b, nil
}

// Damaged returns the pack files under the directory whose index could
// not be read at Open, by path relative to it, with what was wrong. Their
// objects are unknown to Get and List, so a store referencing them finds
// them missing; the files are left for an operator to inspect.
func (b *Backend) Damaged() map[string]error { return b.pk.damagedPacks() }

// Root returns the directory the backend stores objects in.
func (b *Backend) Root() string { return b.root }

func (b *Backend) path(name string) (string, error) {
	if !backend.ValidName(name) {
		return "", fmt.Errorf("invalid object name %q", name)
	}
	return filepath.Join(b.root, filepath.FromSlash(name)), nil
}

// Put stores data under name: write a temporary file, fsync, rename, fsync
// the directory.
func (b *Backend) Put(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := b.path(name)
	if err != nil {
		return err
	}
	if b.pk.packed(name) {
		bt := b.NewBatch()
		if err := bt.Put(ctx, name, data); err != nil {
			bt.Abort()
			return err
		}
		return bt.Commit(ctx)
	}
	if err := b.mkdirs(filepath.Dir(p)); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	tmp := b.tmpPath()
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("put %s: create temporary file: %w", name, err)
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: write: %w", name, werr)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: rename: %w", name, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	return nil
}

// mkdirs creates dir and its parents, fsyncing each parent whose entries
// changed so the new directories survive a crash.
func (b *Backend) mkdirs(dir string) error {
	if _, ok := b.dirs.Load(dir); ok {
		return nil
	}
	if dir == b.root || !strings.HasPrefix(dir, b.root) {
		return nil
	}
	parent := filepath.Dir(dir)
	if err := b.mkdirs(parent); err != nil {
		return err
	}
	err := os.Mkdir(dir, 0o700)
	switch {
	case err == nil:
		if err := syncDir(parent); err != nil {
			return err
		}
	case errors.Is(err, fs.ErrExist):
	default:
		return fmt.Errorf("create directory: %w", err)
	}
	b.dirs.Store(dir, struct{}{})
	return nil
}

// Get returns the object's contents or an error wrapping backend.ErrNotFound.
func (b *Backend) Get(ctx context.Context, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	if data, found, err := b.pk.get(name); found {
		return data, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("get %s: %w", name, backend.ErrNotFound)
		}
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	return data, nil
}

// Delete removes the object; a missing object is not an error.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := b.path(name)
	if err != nil {
		return err
	}
	if err := b.pk.delete(name); err != nil {
		return err
	}
	// A file of the same name is an object from before it was packed.
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// List reports every object whose name starts with prefix.
func (b *Backend) List(ctx context.Context, prefix string, fn func(name string, size int64) error) error {
	if !backend.ValidPrefix(prefix) {
		return fmt.Errorf("invalid prefix %q", prefix)
	}
	names, sizes := b.pk.list(prefix)
	for i, n := range names {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %q: %w", prefix, err)
		}
		if err := fn(n, sizes[i]); err != nil {
			return fmt.Errorf("list %q: %w", prefix, err)
		}
	}
	start := b.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = filepath.Join(b.root, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if strings.HasPrefix(d.Name(), ".") && p != start {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(b.root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() {
			if p != start && p != b.root && !strings.HasPrefix(name+"/", prefix) && !strings.HasPrefix(prefix, name+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if !strings.HasPrefix(name, prefix) {
			return nil
		}
		if _, packed := b.pk.lookup(name); packed {
			return nil // a pack holds its current object, listed above
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		return fn(name, info.Size())
	})
	if err != nil {
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	return nil
}

// Close stops the pack compactor, makes pending deletes of packed objects
// durable and lets another process open the directory.
func (b *Backend) Close() error {
	err := b.pk.close()
	b.closeLock.Do(func() { b.lock.Close() })
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}
