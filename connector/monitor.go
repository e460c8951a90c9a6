package connector

import (
	"context"
	"fmt"
	"time"
)

// Monitor sends QMP commands to one QEMU process. *qmp.Client (a QMP
// socket) and the monitor of a libvirt domain (LibvirtHost.Monitor, which
// goes through libvirtd's qemu-monitor-command) implement it, so
// discovery, fleecing and bitmaps are one code path for both.
type Monitor interface {
	// Execute runs command with args (nil for none) and decodes its return
	// value into out (nil to ignore it). An error reply is a *qmp.Error.
	Execute(ctx context.Context, command string, args, out any) error
}

// DiskNamer is implemented by monitors that know better names for a VM's
// disks than QEMU's node names (libvirt: the target device, "vda").
type DiskNamer interface {
	// DiskNames maps a root format node name to its disk name; a node
	// mapped to "" is not a disk to replicate (a CD-ROM). Nodes it does not
	// know keep their QMP names.
	DiskNames(ctx context.Context) (map[string]string, error)
}

// ProcessOwner is implemented by monitors whose QEMU may run as another
// user than the connector (libvirt's DAC label, user libvirt-qemu on
// Debian): the run's work directory and fleecing images are handed to it,
// since QEMU itself opens them.
type ProcessOwner interface {
	// ProcessOwner is the uid and gid QEMU runs as.
	ProcessOwner(ctx context.Context) (uid, gid int, err error)
}

// waitGone polls query (a QMP query returning a list of objects with an
// id under key) until id is no longer listed: a cancelled block job or a
// deleted export is gone only once QEMU has finished with it. Polling
// rather than waiting for QMP events works through libvirt too.
func waitGone(ctx context.Context, m Monitor, query, key, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	wait := time.Millisecond
	for {
		var list []map[string]any
		if err := m.Execute(ctx, query, nil, &list); err != nil {
			return err
		}
		found := false
		for _, o := range list {
			if o[key] == id {
				found = true
			}
		}
		if !found {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s still lists %s: %w", query, id, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}
