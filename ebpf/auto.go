package ebpf

import (
	"errors"
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry/track"
)

// Auto starts the eBPF tracker for devices and, where it cannot load
// (an error wrapping ErrUnsupported), a rescan tracker passing every
// rescanInterval instead. Kind tells which one runs.
func Auto(devices []string, rescanInterval time.Duration) (track.Tracker, error) {
	t, err := New(devices)
	if err == nil {
		return t, nil
	}
	if !errors.Is(err, ErrUnsupported) {
		return nil, err
	}
	r, rerr := track.NewRescan(devices, rescanInterval)
	if rerr != nil {
		return nil, fmt.Errorf("fall back to rescan (%v): %w", err, rerr)
	}
	return r, nil
}
