package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/replica/backend"
	"github.com/ferrymigrate/ferry/replica/fs"
)

// Replica store layout inside the data directory.
const (
	replicaStaging = "replica/staging" // journals: local, low-latency fsync
	replicaObjects = "replica/objects" // the fs backend: chunks, maps, snapshots
	replicaKey     = "replica.key"     // master key file (0600): back it up
)

// OpenReplica opens the replica store of a data directory (creating it and
// its key on first use). Only one process may hold it: a second gets an
// error wrapping replica.ErrLocked that says so.
func OpenReplica(ctx context.Context, dataDir string, logf func(string, ...any)) (*replica.Store, error) {
	return openReplica(ctx, dataDir, logf, true)
}

// ErrNoStore means a data directory holds no replica store.
var ErrNoStore = errors.New("no replica store")

// OpenExistingReplica is OpenReplica for the offline commands, which
// must not create a store: a data directory without one (a mistyped
// --data) is an error wrapping ErrNoStore, and nothing is created there.
func OpenExistingReplica(ctx context.Context, dataDir string, logf func(string, ...any)) (*replica.Store, error) {
	return openReplica(ctx, dataDir, logf, false)
}

func openReplica(ctx context.Context, dataDir string, logf func(string, ...any), create bool) (*replica.Store, error) {
	noStore := fmt.Errorf("%w in %s (is it the server's data directory?)", ErrNoStore, dataDir)
	for _, d := range []string{replicaStaging, replicaObjects} {
		p := filepath.Join(dataDir, d)
		if !create {
			if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
				return nil, noStore
			}
			continue
		}
		if err := os.MkdirAll(p, 0o700); err != nil {
			return nil, fmt.Errorf("replica store: %w", err)
		}
	}
	b, err := fs.Open(filepath.Join(dataDir, replicaObjects), fs.Packed(replica.ChunkPrefix))
	if errors.Is(err, fs.ErrLocked) {
		return nil, fmt.Errorf("%w: another process (a running ferry server?) holds the replica store in %s", replica.ErrLocked, dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("replica store backend: %w", err)
	}
	keys, err := openKey(ctx, b, dataDir, create)
	if err != nil {
		b.Close()
		if errors.Is(err, ErrNoStore) {
			return nil, noStore
		}
		return nil, err
	}
	s, err := replica.Open(ctx, replica.Options{Dir: filepath.Join(dataDir, replicaStaging), Backend: b, CloseBackend: true, Keys: keys, Logf: logf})
	if err != nil {
		b.Close()
	}
	if errors.Is(err, replica.ErrLocked) {
		return nil, fmt.Errorf("%w: another process (a running ferry server?) holds the replica store in %s", err, dataDir)
	}
	return s, err
}

// openKey loads the store's key file, creating one only for a new store:
// a store whose key file is gone gets an error that says so, not a new
// key that would fail to open it as "wrong key", and no key file is left
// behind to be mistaken for the lost one.
func openKey(ctx context.Context, b backend.Backend, dataDir string, create bool) (*replica.KeyFile, error) {
	path := filepath.Join(dataDir, replicaKey)
	exists, err := replica.Exists(ctx, b)
	if err != nil {
		return nil, fmt.Errorf("replica store: %w", err)
	}
	if !exists {
		if !create {
			return nil, ErrNoStore
		}
		keys, err := replica.OpenKeyFile(path)
		if err != nil {
			return nil, fmt.Errorf("replica store key: %w", err)
		}
		return keys, nil
	}
	keys, err := replica.LoadKeyFile(path)
	if errors.Is(err, replica.ErrNoKey) {
		return nil, fmt.Errorf("replica store key: the store in %s exists but its key file %s is missing (%w): restore it from a backup; without it no replica or snapshot can be read", dataDir, path, replica.ErrNoKey)
	}
	if err != nil {
		return nil, fmt.Errorf("replica store key: %w", err)
	}
	return keys, nil
}
