package jobs

import (
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

func TestCheckStart(t *testing.T) {
	running := &ferry.LaunchedInstance{ID: "i-1", Kind: ferry.InitiatedByStartTest}
	cutInst := &ferry.LaunchedInstance{ID: "i-2", Kind: ferry.InitiatedByStartCutover}
	gone := &ferry.LaunchedInstance{ID: "i-3", Kind: ferry.InitiatedByStartTest, TerminatedAt: time.Unix(1, 0)}
	tests := []struct {
		state    ferry.LifecycleState
		archived bool
		launched *ferry.LaunchedInstance
		by       ferry.JobInitiator
		ok       bool
	}{
		{ferry.LifecycleReadyForTest, false, nil, ferry.InitiatedByStartTest, true},
		{ferry.LifecycleTesting, false, running, ferry.InitiatedByStartTest, true},
		{ferry.LifecycleReadyForCutover, false, nil, ferry.InitiatedByStartTest, true},
		{ferry.LifecycleNotReady, false, nil, ferry.InitiatedByStartTest, false},
		{ferry.LifecycleCutover, false, nil, ferry.InitiatedByStartTest, false},
		{ferry.LifecycleReadyForTest, true, nil, ferry.InitiatedByStartTest, false},
		{ferry.LifecycleReadyForCutover, false, nil, ferry.InitiatedByStartCutover, true},
		{ferry.LifecycleReadyForTest, false, nil, ferry.InitiatedByStartCutover, false},
		{ferry.LifecycleTesting, false, nil, ferry.InitiatedByStartCutover, false},
		{ferry.LifecycleTesting, false, running, ferry.InitiatedByTerminate, true},
		{ferry.LifecycleReadyForTest, false, nil, ferry.InitiatedByTerminate, false},
		{ferry.LifecycleReadyForTest, false, gone, ferry.InitiatedByTerminate, false},
		{ferry.LifecycleCuttingOver, false, cutInst, ferry.InitiatedByTerminate, false},
		{ferry.LifecycleCutover, false, cutInst, ferry.InitiatedByTerminate, false},
		{ferry.LifecycleReadyForCutover, false, cutInst, ferry.InitiatedByTerminate, true},
	}
	for _, tt := range tests {
		srv := &ferry.SourceServer{ID: "s-1", Lifecycle: tt.state, Archived: tt.archived, Launched: tt.launched}
		err := checkStart(srv, tt.by)
		if (err == nil) != tt.ok {
			t.Errorf("%s in %s (archived=%v, launched=%v): err=%v, want ok=%v", tt.by, tt.state, tt.archived, tt.launched != nil, err, tt.ok)
		}
	}
}
