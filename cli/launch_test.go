package cli

import (
	"maps"
	"strings"
	"testing"
	"time"
)

func TestLaunchPoint(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		snapshots []string
		at        string
		wantSnaps map[string]string
		wantAt    time.Time
		wantErr   string
	}{
		{name: "nothing chosen"},
		{name: "the only disk's id", snapshots: []string{"00000000000000a1"}, wantSnaps: map[string]string{"": "00000000000000a1"}},
		{name: "per disk", snapshots: []string{"vda=01", "vdb=02"}, wantSnaps: map[string]string{"vda": "01", "vdb": "02"}},
		{name: "a disk twice", snapshots: []string{"vda=01", "vda=02"}, wantErr: `disk "vda" named twice`},
		{name: "empty id", snapshots: []string{"vda="}, wantErr: "want ID or DISK=ID"},
		{name: "duration ago", at: "15m", wantAt: now.Add(-15 * time.Minute)},
		{name: "a time", at: "2026-11-25T10:00:00Z", wantAt: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)},
		{name: "negative duration", at: "-5m", wantErr: "without a sign"},
		{name: "not a time", at: "yesterday", wantErr: `--at "yesterday"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snaps, at, err := launchPoint(LaunchOptions{Snapshots: tc.snapshots, At: tc.at}, now)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !maps.Equal(snaps, tc.wantSnaps) || !at.Equal(tc.wantAt) {
				t.Errorf("got %v %v %v, want %v %v", snaps, at, err, tc.wantSnaps, tc.wantAt)
			}
		})
	}
}
