package server

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry/controlplane"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/replica"
)

// dataPlaneFigures adapts the replication server to controlplane.DataPlane.
type dataPlaneFigures struct{ d *dataplane.Server }

var _ controlplane.DataPlane = dataPlaneFigures{}

func (f dataPlaneFigures) Traffic(id string) controlplane.Traffic {
	t := f.d.Traffic(id)
	tr := controlplane.Traffic{ReceivedBytes: t.ReceivedBytes, StagingBusy: t.StagingBusy, Connected: t.Connected}
	if a := t.Agent; a != nil {
		tr.Agent = &controlplane.AgentTiming{Read: time.Duration(a.ReadNanos), Network: time.Duration(a.NetworkNanos),
			Throttle: time.Duration(a.ThrottleNanos), Idle: time.Duration(a.IdleNanos)}
	}
	return tr
}

func (f dataPlaneFigures) Sessions() int { return f.d.Sessions() }

// stagingUsage adapts the replica store to controlplane.StagingUsage.
type stagingUsage struct{ r *replica.Store }

var _ controlplane.StagingUsage = stagingUsage{}

func (u stagingUsage) StagingUsage(ctx context.Context) ([]controlplane.DiskStaging, int64, error) {
	us, err := u.r.Usage(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("replica store usage: %w", err)
	}
	out := make([]controlplane.DiskStaging, 0, len(us.Disks))
	for _, d := range us.Disks {
		out = append(out, controlplane.DiskStaging{DiskID: d.Disk, LogicalBytes: d.Allocated, StoredBytes: d.Referenced, JournalBytes: d.JournalBytes, Snapshots: d.Snapshots})
	}
	return out, us.StoredBytes, nil
}

// ControlPlane is the server's API, for tests that drive its background
// work (such as history sampling) directly.
func (s *Server) ControlPlane() *controlplane.Server { return s.cp }
