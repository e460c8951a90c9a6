// Package fs implements backend.Backend on a local file system directory.
//
// Every object is one file under the root directory, named by its object
// name. Put writes a temporary file under root/.tmp, fsyncs it, renames it
// into place and fsyncs the parent directory, so an object is either absent
// or complete after a crash at any instant. Leftover temporary files from a
// crash are removed by Open.
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

// Backend is a backend.Backend storing objects as files under a directory.
type Backend struct {
	root string
	dirs sync.Map // directory path -> struct{}: known to exist durably
}

// Open returns a Backend rooted at dir, creating dir if needed and removing
// temporary files a crash may have left behind. Only one process may use a
// directory at a time.
func Open(dir string) (*Backend, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create backend directory: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("resolve backend directory: %w", err)
	}
	b := &Backend{root: abs}
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
	return b, nil
}

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

// Close releases nothing; it exists to satisfy backend.Backend.
func (b *Backend) Close() error { return nil }

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
