package server

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/replica"
)

// TestOpenReplicaKeys checks how a data directory's store and key file
// are found, created or refused: a store whose key file is gone must be
// named as such and get no new key, and the offline commands must not
// create a store in a mistyped --data.
func TestOpenReplicaKeys(t *testing.T) {
	// newStore returns a data directory holding a store and its key.
	newStore := func(t *testing.T) string {
		dir := t.TempDir()
		s, err := OpenReplica(t.Context(), dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	keyPath := func(dir string) string { return filepath.Join(dir, replicaKey) }
	tests := []struct {
		name     string
		setup    func(t *testing.T) string // returns the data directory
		existing bool                      // OpenExistingReplica, else OpenReplica
		wantErr  error                     // nil: opens
		wantMsg  string
		wantKey  bool // a key file exists afterwards
	}{
		{name: "first start creates store and key", setup: func(t *testing.T) string { return t.TempDir() }, wantKey: true},
		{name: "reopen", setup: newStore, wantKey: true},
		{name: "offline reopen", setup: newStore, existing: true, wantKey: true},
		{name: "offline in an empty directory", setup: func(t *testing.T) string { return t.TempDir() }, existing: true,
			wantErr: ErrNoStore, wantMsg: "is it the server's data directory"},
		{name: "offline where a first start failed before the store", existing: true, wantErr: ErrNoStore,
			setup: func(t *testing.T) string {
				dir := t.TempDir()
				for _, d := range []string{replicaStaging, replicaObjects} {
					if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
						t.Fatal(err)
					}
				}
				return dir
			}},
		{name: "key file missing", wantErr: replica.ErrNoKey, wantMsg: "exists but its key file",
			setup: func(t *testing.T) string {
				dir := newStore(t)
				if err := os.Remove(keyPath(dir)); err != nil {
					t.Fatal(err)
				}
				return dir
			}},
		{name: "key file missing, offline", existing: true, wantErr: replica.ErrNoKey, wantMsg: "restore it from a backup",
			setup: func(t *testing.T) string {
				dir := newStore(t)
				if err := os.Remove(keyPath(dir)); err != nil {
					t.Fatal(err)
				}
				return dir
			}},
		{name: "another store's key", wantErr: replica.ErrWrongKey, wantKey: true,
			setup: func(t *testing.T) string {
				dir, other := newStore(t), newStore(t)
				b, err := os.ReadFile(keyPath(other))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(keyPath(dir), b, 0o600); err != nil {
					t.Fatal(err)
				}
				return dir
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.setup(t)
			open := OpenReplica
			if tt.existing {
				open = OpenExistingReplica
			}
			s, err := open(t.Context(), dir, nil)
			if err == nil {
				s.Close()
			}
			if tt.wantErr == nil && err != nil {
				t.Fatalf("open: %v", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("open: %v, want an error wrapping %v", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not say %q", err, tt.wantMsg)
			}
			if _, err := os.Stat(keyPath(dir)); (err == nil) != tt.wantKey {
				t.Errorf("key file exists = %v, want %v", err == nil, tt.wantKey)
			}
			if tt.wantErr == ErrNoStore {
				if _, err := os.Stat(filepath.Join(dir, "replica", "objects", "config")); err == nil {
					t.Error("a store was created by an offline open")
				}
			}
		})
	}
}
