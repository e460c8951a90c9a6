package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrymigrate/ferry/replica"
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
	for _, d := range []string{replicaStaging, replicaObjects} {
		if err := os.MkdirAll(filepath.Join(dataDir, d), 0o700); err != nil {
			return nil, fmt.Errorf("replica store: %w", err)
		}
	}
	keys, err := replica.OpenKeyFile(filepath.Join(dataDir, replicaKey))
	if err != nil {
		return nil, fmt.Errorf("replica store key: %w", err)
	}
	b, err := fs.Open(filepath.Join(dataDir, replicaObjects), fs.Packed(replica.ChunkPrefix))
	if errors.Is(err, fs.ErrLocked) {
		return nil, fmt.Errorf("%w: another process (a running ferry server?) holds the replica store in %s", replica.ErrLocked, dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("replica store backend: %w", err)
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
