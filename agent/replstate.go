package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrymigrate/ferry/pki"
)

// replicationFile keeps the replication progress in the state directory.
const replicationFile = "replication.json"

// diskProgress is what survives an agent restart for one disk. Everything
// in it was acknowledged as durable by the server.
type diskProgress struct {
	Size       int64  `json:"size"`
	SyncCursor int64  `json:"sync_cursor"`
	SyncDone   bool   `json:"sync_done"`
	AckedSeq   uint64 `json:"acked_seq"`
}

type progressFile struct {
	Version int                     `json:"version"`
	Disks   map[string]diskProgress `json:"disks"`
}

func loadProgress(stateDir string) (map[string]diskProgress, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, replicationFile))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]diskProgress{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read replication progress: %w", err)
	}
	var p progressFile
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("replication progress %s: %w", filepath.Join(stateDir, replicationFile), err)
	}
	if p.Disks == nil {
		p.Disks = map[string]diskProgress{}
	}
	return p.Disks, nil
}

// saveProgress writes the progress atomically (temporary file, fsync,
// rename), 0600.
func saveProgress(stateDir string, disks map[string]diskProgress) error {
	b, err := json.MarshalIndent(progressFile{Version: 1, Disks: disks}, "", "  ")
	if err != nil {
		return err
	}
	if err := pki.WriteFileAtomic(filepath.Join(stateDir, replicationFile), b, 0o600); err != nil {
		return fmt.Errorf("save replication progress: %w", err)
	}
	return nil
}
