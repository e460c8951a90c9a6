package dataplane

import (
	"testing"

	"github.com/ferrymigrate/ferry/protocol"
)

func TestMilestone(t *testing.T) {
	st := func(done ...bool) *protocol.Stats {
		s := &protocol.Stats{}
		for _, d := range done {
			s.Disks = append(s.Disks, protocol.DiskStats{SyncDone: d, Phase: protocol.PhaseContinuous})
		}
		return s
	}
	ph := func(p ...protocol.Phase) *protocol.Stats {
		s := &protocol.Stats{}
		for _, x := range p {
			s.Disks = append(s.Disks, protocol.DiskStats{SyncDone: true, Phase: x})
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
		{"rescan ended", ph(protocol.PhaseRescan), ph(protocol.PhaseContinuous), true},
		{"rescan ended into a backlog", ph(protocol.PhaseContinuous, protocol.PhaseRescan), ph(protocol.PhaseContinuous, protocol.PhaseBacklog), true},
		{"still rescanning", ph(protocol.PhaseRescan), ph(protocol.PhaseRescan), false},
		{"rescan started", ph(protocol.PhaseContinuous), ph(protocol.PhaseRescan), false},
		{"backlog flaps", ph(protocol.PhaseContinuous), ph(protocol.PhaseBacklog), false},
		{"backlog drains", ph(protocol.PhaseBacklog), ph(protocol.PhaseContinuous), false},
	}
	for _, tt := range tests {
		if got := milestone(tt.prev, tt.cur); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
