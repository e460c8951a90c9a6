package dataplane

import (
	"testing"

	"github.com/ferrymigrate/ferry/protocol"
)

func TestNewlySynced(t *testing.T) {
	st := func(done ...bool) *protocol.Stats {
		s := &protocol.Stats{}
		for _, d := range done {
			s.Disks = append(s.Disks, protocol.DiskStats{SyncDone: d})
		}
		return s
	}
	tests := []struct {
		name      string
		prev, cur *protocol.Stats
		want      bool
	}{
		{"first STATS, syncing", nil, st(false), false},
		{"first STATS, done (a resumed session)", nil, st(true), true},
		{"still syncing", st(false, false), st(false, false), false},
		{"one disk done", st(false, false), st(true, false), true},
		{"already done", st(true), st(true), false},
		{"a disk added, done", st(true), st(true, true), true},
	}
	for _, tt := range tests {
		if got := newlySynced(tt.prev, tt.cur); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
