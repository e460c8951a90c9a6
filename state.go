package ferry

import "fmt"

// LifecycleState is where a source server stands in its migration, with the
// names AWS MGN uses.
type LifecycleState string

// Lifecycle states.
const (
	LifecycleStopped             LifecycleState = "STOPPED"
	LifecycleNotReady            LifecycleState = "NOT_READY"
	LifecycleReadyForTest        LifecycleState = "READY_FOR_TEST"
	LifecycleTesting             LifecycleState = "TESTING"
	LifecycleReadyForCutover     LifecycleState = "READY_FOR_CUTOVER"
	LifecycleCuttingOver         LifecycleState = "CUTTING_OVER"
	LifecycleCutover             LifecycleState = "CUTOVER"
	LifecycleDisconnected        LifecycleState = "DISCONNECTED"
	LifecycleDiscovered          LifecycleState = "DISCOVERED"
	LifecyclePendingInstallation LifecycleState = "PENDING_INSTALLATION"
)

// LifecycleStates lists every lifecycle state, in the order a migration
// usually walks through them.
var LifecycleStates = []LifecycleState{
	LifecycleDiscovered, LifecyclePendingInstallation, LifecycleNotReady,
	LifecycleReadyForTest, LifecycleTesting, LifecycleReadyForCutover,
	LifecycleCuttingOver, LifecycleCutover, LifecycleDisconnected, LifecycleStopped,
}

// Valid reports whether s is one of the lifecycle states.
func (s LifecycleState) Valid() bool {
	for _, v := range LifecycleStates {
		if s == v {
			return true
		}
	}
	return false
}

// lifecycleTransitions is the single table of allowed lifecycle moves.
// Every state may also move to DISCONNECTED (the agent is disconnected from
// the service) and, once disconnected, a re-paired agent starts over at
// NOT_READY.
var lifecycleTransitions = map[LifecycleState][]LifecycleState{
	LifecycleDiscovered:          {LifecyclePendingInstallation, LifecycleNotReady, LifecycleDisconnected},
	LifecyclePendingInstallation: {LifecycleNotReady, LifecycleDisconnected},
	LifecycleNotReady:            {LifecycleReadyForTest, LifecycleStopped, LifecycleDisconnected},
	LifecycleReadyForTest:        {LifecycleTesting, LifecycleReadyForCutover, LifecycleCuttingOver, LifecycleNotReady, LifecycleStopped, LifecycleDisconnected},
	LifecycleTesting:             {LifecycleReadyForTest, LifecycleReadyForCutover, LifecycleDisconnected},
	LifecycleReadyForCutover:     {LifecycleCuttingOver, LifecycleReadyForTest, LifecycleTesting, LifecycleDisconnected},
	LifecycleCuttingOver:         {LifecycleCutover, LifecycleReadyForCutover, LifecycleDisconnected},
	LifecycleCutover:             {LifecycleDisconnected},
	LifecycleDisconnected:        {LifecycleNotReady, LifecyclePendingInstallation},
	LifecycleStopped:             {LifecycleNotReady, LifecycleDisconnected},
}

// TransitionError reports a lifecycle move that the state machine forbids.
type TransitionError struct {
	From, To LifecycleState
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("illegal lifecycle transition from %s to %s", e.From, e.To)
}

// CheckTransition returns nil when a server may move from one lifecycle
// state to another, and a *TransitionError naming both states otherwise.
// Staying in the same state is allowed.
func CheckTransition(from, to LifecycleState) error {
	if !from.Valid() || !to.Valid() {
		return &TransitionError{From: from, To: to}
	}
	if from == to {
		return nil
	}
	for _, s := range lifecycleTransitions[from] {
		if s == to {
			return nil
		}
	}
	return &TransitionError{From: from, To: to}
}

// CanArchive reports whether a server in state s may be archived: only
// once it is DISCONNECTED or CUTOVER, as in MGN.
func CanArchive(s LifecycleState) bool {
	return s == LifecycleDisconnected || s == LifecycleCutover
}

// ReplicationState is the state of a server's data replication.
type ReplicationState string

// Data replication states.
const (
	ReplicationStopped          ReplicationState = "STOPPED"
	ReplicationInitiating       ReplicationState = "INITIATING"
	ReplicationInitialSync      ReplicationState = "INITIAL_SYNC"
	ReplicationBacklog          ReplicationState = "BACKLOG"
	ReplicationCreatingSnapshot ReplicationState = "CREATING_SNAPSHOT"
	ReplicationContinuous       ReplicationState = "CONTINUOUS"
	ReplicationPaused           ReplicationState = "PAUSED"
	ReplicationRescan           ReplicationState = "RESCAN"
	ReplicationStalled          ReplicationState = "STALLED"
	ReplicationDisconnected     ReplicationState = "DISCONNECTED"
)

// ReplicationStates lists every data replication state.
var ReplicationStates = []ReplicationState{
	ReplicationStopped, ReplicationInitiating, ReplicationInitialSync, ReplicationBacklog,
	ReplicationCreatingSnapshot, ReplicationContinuous, ReplicationPaused, ReplicationRescan,
	ReplicationStalled, ReplicationDisconnected,
}

// Valid reports whether s is one of the replication states.
func (s ReplicationState) Valid() bool {
	for _, v := range ReplicationStates {
		if s == v {
			return true
		}
	}
	return false
}

// ReplicationErrorCode names why replication is unhealthy.
type ReplicationErrorCode string

// Replication error codes. FAILED_TO_<step> codes are built with FailedTo.
const (
	ErrCodeAgentNotSeen             ReplicationErrorCode = "AGENT_NOT_SEEN"
	ErrCodeNotConverging            ReplicationErrorCode = "NOT_CONVERGING"
	ErrCodeUnstableNetwork          ReplicationErrorCode = "UNSTABLE_NETWORK"
	ErrCodeSnapshotsFailure         ReplicationErrorCode = "SNAPSHOTS_FAILURE"
	ErrCodeUnsupportedConfiguration ReplicationErrorCode = "UNSUPPORTED_CONFIGURATION"
)

// FailedTo returns the FAILED_TO_<step> error code for an initiation step.
func FailedTo(step InitiationStep) ReplicationErrorCode {
	return ReplicationErrorCode("FAILED_TO_" + string(step))
}

// InitiationStep is one step of starting replication for a server.
type InitiationStep string

// Initiation steps. Ferry needs no cloud resources, so it has fewer than MGN.
const (
	StepAuthenticateWithService         InitiationStep = "AUTHENTICATE_WITH_SERVICE"
	StepCreateStagingDisks              InitiationStep = "CREATE_STAGING_DISKS"
	StepPairReplicationServerWithAgent  InitiationStep = "PAIR_REPLICATION_SERVER_WITH_AGENT"
	StepConnectAgentToReplicationServer InitiationStep = "CONNECT_AGENT_TO_REPLICATION_SERVER"
	StepStartDataTransfer               InitiationStep = "START_DATA_TRANSFER"
)

// InitiationSteps lists the initiation steps in order.
var InitiationSteps = []InitiationStep{
	StepAuthenticateWithService, StepCreateStagingDisks, StepPairReplicationServerWithAgent,
	StepConnectAgentToReplicationServer, StepStartDataTransfer,
}

// StepStatus is the status of one initiation step.
type StepStatus string

// Initiation step statuses.
const (
	StepNotStarted StepStatus = "NOT_STARTED"
	StepInProgress StepStatus = "IN_PROGRESS"
	StepSucceeded  StepStatus = "SUCCEEDED"
	StepFailed     StepStatus = "FAILED"
	StepSkipped    StepStatus = "SKIPPED"
)

// DesiredReplication is the operator's instruction for a server's
// replication: MGN's start, stop, pause and resume actions.
type DesiredReplication string

// Desired replication values. The zero value means run.
const (
	DesiredRun   DesiredReplication = ""
	DesiredPause DesiredReplication = "PAUSE"
	DesiredStop  DesiredReplication = "STOP"
)
