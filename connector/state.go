package connector

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrymigrate/ferry/pki"
)

// vmStateFile keeps a VM's replication progress in its state directory.
const vmStateFile = "connector.json"

// diskState is what survives a connector restart for one disk.
type diskState struct {
	// Bitmap is the persistent dirty bitmap that records every write since
	// the last point in time the server acknowledged ("" before the first
	// acknowledged run).
	Bitmap string `json:"bitmap,omitempty"`
	// Next is the bitmap a run in progress created; after a crash both
	// Bitmap and Next are read (their union covers the gap).
	Next string `json:"next,omitempty"`
	// Synced says a first full copy was acknowledged.
	Synced bool `json:"synced"`
	// SyncSeq is the seq of the snapshot that ended the first full copy.
	SyncSeq uint64 `json:"sync_seq,omitempty"`
	// NeedRescan says the next run must compare every block by hash (set
	// when change tracking had a gap, cleared when a rescan is acked).
	NeedRescan bool `json:"need_rescan,omitempty"`
	// AckedSeq is the highest seq the server acknowledged as durable.
	AckedSeq uint64 `json:"acked_seq"`
}

// vmState is a VM's connector-side replication state.
type vmState struct {
	Version int                   `json:"version"`
	Gen     uint64                `json:"gen"` // names bitmaps ferry-<gen>
	Disks   map[string]*diskState `json:"disks"`
}

func loadVMState(dir string) (*vmState, error) {
	st := &vmState{Version: 1, Disks: map[string]*diskState{}}
	b, err := os.ReadFile(filepath.Join(dir, vmStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read connector state: %w", err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("connector state %s: %w", filepath.Join(dir, vmStateFile), err)
	}
	if st.Disks == nil {
		st.Disks = map[string]*diskState{}
	}
	return st, nil
}

func (st *vmState) disk(name string) *diskState {
	d := st.Disks[name]
	if d == nil {
		d = &diskState{}
		st.Disks[name] = d
	}
	return d
}

// save writes the state atomically (temporary file, fsync, rename), 0600.
func (st *vmState) save(dir string) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := pki.WriteFileAtomic(filepath.Join(dir, vmStateFile), b, 0o600); err != nil {
		return fmt.Errorf("save connector state: %w", err)
	}
	return nil
}
