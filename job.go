package ferry

import "time"

// JobType is what a job does.
type JobType string

// Job types.
const (
	JobLaunch    JobType = "LAUNCH"
	JobTerminate JobType = "TERMINATE"
)

// JobInitiator is the action that started a job.
type JobInitiator string

// Job initiators.
const (
	InitiatedByStartTest    JobInitiator = "START_TEST"
	InitiatedByStartCutover JobInitiator = "START_CUTOVER"
	InitiatedByTerminate    JobInitiator = "TERMINATE"
)

// JobStatus is where a job stands.
type JobStatus string

// Job statuses.
const (
	JobPending   JobStatus = "PENDING"
	JobStarted   JobStatus = "STARTED"
	JobCompleted JobStatus = "COMPLETED"
)

// LaunchStatus is a per-server launch outcome within a job.
type LaunchStatus string

// Launch statuses.
const (
	LaunchPending    LaunchStatus = "PENDING"
	LaunchInProgress LaunchStatus = "IN_PROGRESS"
	LaunchLaunched   LaunchStatus = "LAUNCHED"
	LaunchFailed     LaunchStatus = "FAILED"
	LaunchTerminated LaunchStatus = "TERMINATED"
)

// Job is a launch or terminate operation over one or more servers.
type Job struct {
	ID          string       `json:"id"`
	Type        JobType      `json:"type"`
	InitiatedBy JobInitiator `json:"initiated_by"`
	Status      JobStatus    `json:"status"`
	Servers     []JobServer  `json:"participating_servers"`
	CreatedAt   time.Time    `json:"created_at"`
	EndedAt     time.Time    `json:"ended_at,omitzero"`
}

// JobServer is one server's part in a job.
type JobServer struct {
	SourceServerID string       `json:"source_server_id"`
	LaunchStatus   LaunchStatus `json:"launch_status"`
	InstanceID     string       `json:"instance_id,omitempty"`
}

// JobEvent names a step in a job's log.
type JobEvent string

// Job log events.
const (
	EventJobStart              JobEvent = "JOB_START"
	EventSnapshotStart         JobEvent = "SNAPSHOT_START"
	EventSnapshotEnd           JobEvent = "SNAPSHOT_END"
	EventSnapshotFail          JobEvent = "SNAPSHOT_FAIL"
	EventUsingPreviousSnapshot JobEvent = "USING_PREVIOUS_SNAPSHOT"
	EventConversionStart       JobEvent = "CONVERSION_START"
	EventConversionEnd         JobEvent = "CONVERSION_END"
	EventConversionFail        JobEvent = "CONVERSION_FAIL"
	EventLaunchStart           JobEvent = "LAUNCH_START"
	EventLaunchFailed          JobEvent = "LAUNCH_FAILED"
	EventPostLaunchStart       JobEvent = "POST_LAUNCH_ACTION_START"
	EventPostLaunchEnd         JobEvent = "POST_LAUNCH_ACTION_END"
	EventPostLaunchFail        JobEvent = "POST_LAUNCH_ACTION_FAIL"
	EventCleanupStart          JobEvent = "CLEANUP_START"
	EventCleanupEnd            JobEvent = "CLEANUP_END"
	EventCleanupFail           JobEvent = "CLEANUP_FAIL"
	EventJobCancel             JobEvent = "JOB_CANCEL"
	EventJobEnd                JobEvent = "JOB_END"
)

// JobLogItem is one timestamped entry of a job's log.
type JobLogItem struct {
	JobID          string    `json:"job_id"`
	Time           time.Time `json:"time"`
	Event          JobEvent  `json:"event"`
	SourceServerID string    `json:"source_server_id,omitempty"`
	Message        string    `json:"message,omitempty"`
}
