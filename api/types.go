package api

import (
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry"
)

// Error is the body of every error response.
type Error struct {
	// Code is a stable machine-readable reason, e.g. "not_found".
	Code string `json:"code"`
	// Message says what was wrong in words a person can act on.
	Message string `json:"message"`
	// Errors, when present, lists every problem found in a bulk request
	// (e.g. each bad cell of a CSV import), so all can be fixed at once.
	Errors []FieldError `json:"errors,omitempty"`
	// Status is the HTTP status; not sent on the wire.
	Status int `json:"-"`
}

// FieldError is one problem in a bulk request: where it is and what to
// fix.
type FieldError struct {
	// Row is the 1-based row of a CSV file, the header being row 1; 0 when
	// the problem is not in one row.
	Row int `json:"row,omitempty"`
	// Column is the column's header name, when the problem is in one cell.
	Column  string `json:"column,omitempty"`
	Message string `json:"message"`
}

func (e FieldError) String() string {
	var where string
	switch {
	case e.Row > 0 && e.Column != "":
		where = fmt.Sprintf("row %d, column %s: ", e.Row, e.Column)
	case e.Row > 0:
		where = fmt.Sprintf("row %d: ", e.Row)
	case e.Column != "":
		where = fmt.Sprintf("column %s: ", e.Column)
	}
	return where + e.Message
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Error codes.
const (
	CodeBadRequest        = "bad_request"
	CodeUnauthorized      = "unauthorized"
	CodeTokenExpired      = "token_expired" // a 401: the API token's time ran out; sign in again with a new one
	CodeForbidden         = "forbidden"
	CodeNotFound          = "not_found"
	CodeConflict          = "conflict"
	CodeInvalidTransition = "invalid_transition"
	CodeTooLarge          = "payload_too_large"
	CodeRateLimited       = "rate_limited"
	CodeInternal          = "internal"
	CodeUnsupportedMedia  = "unsupported_media_type"
	CodeMethodNotAllowed  = "method_not_allowed"
	CodeUnavailable       = "unavailable"
)

// List is one page of a list, with the cursor for the next page.
type List[T any] struct {
	Items []T `json:"items"`
	// NextToken is passed as ?next_token= to get the next page; empty on
	// the last page.
	NextToken string `json:"next_token,omitempty"`
}

// WhoAmI describes the token a request was made with.
type WhoAmI struct {
	TokenID string     `json:"token_id"`
	Name    string     `json:"name"`
	Role    ferry.Role `json:"role"`
}

// CreateTokenRequest asks for a new API token.
type CreateTokenRequest struct {
	Name string     `json:"name"`
	Role ferry.Role `json:"role"`
	// ExpiresInSeconds, when positive, makes the token expire.
	ExpiresInSeconds int64 `json:"expires_in_seconds,omitempty"`
}

// CreatedToken is a new API token; Secret is shown this once.
type CreatedToken struct {
	ferry.Token
	Secret string `json:"secret"`
}

// CreateInstallTokenRequest asks for a new install token.
type CreateInstallTokenRequest struct {
	Name          string            `json:"name"`
	ApplicationID string            `json:"application_id,omitempty"`
	WaveID        string            `json:"wave_id,omitempty"`
	Tags          map[string]string `json:"tags,omitempty"`
	// MaxUses limits how many agents may pair with it (0: no limit).
	MaxUses int `json:"max_uses,omitempty"`
	// ExpiresInSeconds is required: install tokens always expire.
	ExpiresInSeconds int64 `json:"expires_in_seconds"`
}

// CreatedInstallToken is a new install token; Secret is shown this once.
type CreatedInstallToken struct {
	ferry.InstallToken
	Secret string `json:"secret"`
}

// PairRequest is what an agent sends to pair: the install token, its host
// facts and a certificate signing request.
type PairRequest struct {
	InstallToken string      `json:"install_token"`
	MachineID    string      `json:"machine_id"`
	Hostname     string      `json:"hostname"`
	OS           string      `json:"os"`
	Kernel       string      `json:"kernel"`
	CPUs         int         `json:"cpus"`
	RAMBytes     int64       `json:"ram_bytes"`
	NICs         []ferry.NIC `json:"nics"`
	Disks        []PairDisk  `json:"disks"`
	AgentVersion string      `json:"agent_version"`
	// CSR is a PEM certificate signing request for the agent's key.
	CSR string `json:"csr"`
	// Discovered registers a new source server as DISCOVERED (the
	// connector's server catalog: facts known, nothing replicated yet)
	// instead of NOT_READY; its first data-plane session moves it on to
	// NOT_READY.
	Discovered bool `json:"discovered,omitempty"`
}

// PairDisk is a disk as the agent found it.
type PairDisk struct {
	Name             string `json:"name"`
	SizeBytes        int64  `json:"size_bytes"`
	LogicalBlockSize int    `json:"logical_block_size"`
	Model            string `json:"model,omitempty"`
}

// PairResponse gives the agent its identity.
type PairResponse struct {
	SourceServerID string `json:"source_server_id"`
	// Certificate is the agent's client certificate, PEM.
	Certificate string `json:"certificate"`
	// CACertificate is the server CA, PEM, trusted from now on.
	CACertificate string `json:"ca_certificate"`
	// DataPlaneAddress is where the agent sends data (host:port).
	DataPlaneAddress string `json:"data_plane_address"`
}

// UpdateServerRequest changes what an operator may change on a server.
// Absent fields are left as they are.
type UpdateServerRequest struct {
	Tags          *map[string]string         `json:"tags,omitempty"`
	ApplicationID *string                    `json:"application_id,omitempty"`
	WaveID        *string                    `json:"wave_id,omitempty"`
	Replication   *ferry.ReplicationSettings `json:"replication_settings,omitempty"`
	Launch        *ferry.LaunchSettings      `json:"launch_settings,omitempty"`
}

// ChangeLifecycleRequest moves a server to another lifecycle state by hand,
// as MGN's ChangeServerLifeCycleState does.
type ChangeLifecycleRequest struct {
	State ferry.LifecycleState `json:"state"`
}

// CreateTemplateRequest makes a settings template; absent settings take
// Ferry's defaults.
type CreateTemplateRequest struct {
	Name        string                     `json:"name"`
	Replication *ferry.ReplicationSettings `json:"replication_settings,omitempty"`
	Launch      *ferry.LaunchSettings      `json:"launch_settings,omitempty"`
}

// UpdateTemplateRequest changes a template; absent fields are kept.
type UpdateTemplateRequest struct {
	Name        *string                    `json:"name,omitempty"`
	Replication *ferry.ReplicationSettings `json:"replication_settings,omitempty"`
	Launch      *ferry.LaunchSettings      `json:"launch_settings,omitempty"`
}

// GroupRequest creates or changes an application or a wave; absent fields
// are kept on update.
type GroupRequest struct {
	Name        *string            `json:"name,omitempty"`
	Description *string            `json:"description,omitempty"`
	WaveID      *string            `json:"wave_id,omitempty"` // applications only
	Tags        *map[string]string `json:"tags,omitempty"`
}

// JobWithLog is a job and its log.
type JobWithLog struct {
	ferry.Job
	Log []ferry.JobLogItem `json:"log"`
}

// Health is the body of GET /api/v1/health.
type Health struct {
	Status  string    `json:"status"`
	Version string    `json:"version"`
	Time    time.Time `json:"time"`
}

// StartJobRequest starts a test launch, a cutover or a termination for one
// or more servers (one job).
type StartJobRequest struct {
	SourceServerIDs []string `json:"source_server_ids"`
	// UseLatestSnapshot launches from the newest existing snapshot instead
	// of taking one now.
	UseLatestSnapshot bool `json:"use_latest_snapshot,omitempty"`
	// SkipDrain starts a cutover without waiting for the backlog to drain.
	SkipDrain bool `json:"skip_drain,omitempty"`
	// LaunchTemplateID launches with that template's launch settings
	// instead of each server's own.
	LaunchTemplateID string `json:"launch_template_id,omitempty"`
	// Snapshots launches from these existing snapshots, disk name →
	// snapshot id; the key "" names the only disk of a one-disk server.
	Snapshots map[string]string `json:"snapshots,omitempty"`
	// PointInTime launches from each disk's newest snapshot taken at or
	// before this time.
	PointInTime time.Time `json:"point_in_time,omitzero"`
}

// Snapshot is one point-in-time snapshot of a replicated disk.
type Snapshot struct {
	Disk        string    `json:"disk"`
	ID          string    `json:"id"`
	Time        time.Time `json:"time"`
	Seq         uint64    `json:"seq"`
	Consistency string    `json:"consistency"`
	SizeBytes   int64     `json:"size_bytes"`
}

// TakeSnapshotRequest asks for a snapshot of every disk of a server now.
type TakeSnapshotRequest struct {
	// Drain waits until the agent has sent everything it tracked, as a
	// cutover does; otherwise the newest consistent point is used.
	Drain bool `json:"drain,omitempty"`
	// TimeoutSeconds bounds the drain (default 300).
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
	// Consistency is ConsistencyCrash (the default) or ConsistencyApp: the
	// agent freezes the file systems on the disks (at most 2 s), drains
	// and marks the point app-consistent; APP implies Drain.
	Consistency string `json:"consistency,omitempty"`
}

// Snapshot consistency levels a TakeSnapshotRequest may ask for.
const (
	ConsistencyCrash = "CRASH"
	ConsistencyApp   = "APP"
)

// TakenSnapshots names the snapshot taken of each disk.
type TakenSnapshots struct {
	Snapshots map[string]string `json:"snapshots"`
}

// GroupHealth is the aggregated replication health of an application's or
// a wave's servers.
type GroupHealth string

// Group health values, from best to worst.
const (
	HealthHealthy GroupHealth = "HEALTHY"
	HealthLagging GroupHealth = "LAGGING"
	HealthError   GroupHealth = "ERROR"
)

// GroupProgress is how far an application's or a wave's servers have got
// through their migration.
type GroupProgress string

// Group progress values.
const (
	ProgressNotStarted GroupProgress = "NOT_STARTED"
	ProgressInProgress GroupProgress = "IN_PROGRESS"
	ProgressCompleted  GroupProgress = "COMPLETED"
)

// GroupSummary aggregates the live (unarchived) member servers of an
// application or a wave.
type GroupSummary struct {
	Health   GroupHealth   `json:"health"`
	Progress GroupProgress `json:"progress"`
	// Servers is the number of member servers.
	Servers int `json:"server_count"`
	// ErrorServers and LaggingServers count the members that make the
	// health ERROR or LAGGING.
	ErrorServers   int `json:"error_server_count"`
	LaggingServers int `json:"lagging_server_count"`
	// Lifecycle counts the members by lifecycle state (states with no
	// member are left out).
	Lifecycle map[ferry.LifecycleState]int `json:"lifecycle_counts"`
}

// ApplicationStatus is an application with the summary of its servers.
type ApplicationStatus struct {
	ferry.Application
	Summary GroupSummary `json:"summary"`
}

// WaveStatus is a wave with the summary of its servers: those assigned to
// the wave directly and those of its applications that name no other
// wave.
type WaveStatus struct {
	ferry.Wave
	Summary GroupSummary `json:"summary"`
}

// Import task statuses.
const (
	ImportSucceeded = "SUCCEEDED"
	ImportFailed    = "FAILED"
	ImportValidated = "VALIDATED" // a dry run that found no errors
)

// ImportTask records one CSV import: what it changed, or why it changed
// nothing. An import is all-or-nothing.
type ImportTask struct {
	ID     string    `json:"id"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"`
	DryRun bool      `json:"dry_run"`
	// Status is SUCCEEDED, FAILED or VALIDATED.
	Status string `json:"status"`
	// Rows is the number of data rows (the header not counted).
	Rows                int `json:"rows"`
	CreatedApplications int `json:"created_applications"`
	CreatedWaves        int `json:"created_waves"`
	ModifiedServers     int `json:"modified_servers"`
	UnchangedServers    int `json:"unchanged_servers"`
	// IgnoredColumns are export-only columns (lifecycle_state, …) that an
	// import reads past.
	IgnoredColumns []string `json:"ignored_columns,omitempty"`
	// Errors are the problems found, at most MaxImportErrors of them;
	// ErrorCount is how many there were in all.
	Errors     []FieldError `json:"errors,omitempty"`
	ErrorCount int          `json:"error_count"`
}

// MaxImportErrors bounds the errors one import reports.
const MaxImportErrors = 200

// ServerChanges is the data of a "servers" event on GET /events: servers
// that changed or appeared since the last event, and ids of servers that
// were deleted or archived.
type ServerChanges struct {
	Changed []*ferry.SourceServer `json:"changed"`
	Removed []string              `json:"removed"`
}

// BulkJobRequest tunes a bulk test launch or cutover of a wave's or an
// application's servers; an empty body takes the defaults.
type BulkJobRequest struct {
	UseLatestSnapshot bool `json:"use_latest_snapshot,omitempty"`
	SkipDrain         bool `json:"skip_drain,omitempty"`
}

// BulkJobResult says what a bulk action did for each member server: one
// job per server started, or the reason it was not.
type BulkJobResult struct {
	Started    []BulkJobStarted `json:"started"`
	NotStarted []BulkJobSkipped `json:"not_started"`
}

// BulkJobStarted is a member server's job.
type BulkJobStarted struct {
	SourceServerID string `json:"source_server_id"`
	JobID          string `json:"job_id"`
}

// BulkJobSkipped is a member server no job was started for, and why.
type BulkJobSkipped struct {
	SourceServerID string `json:"source_server_id"`
	Reason         string `json:"reason"`
}

// HistorySample is one point of a server's replication history, taken by
// the control plane about every ten seconds.
type HistorySample struct {
	Time         time.Time `json:"time"`
	LagSeconds   float64   `json:"lag_seconds"`
	BacklogBytes int64     `json:"backlog_bytes"`
	// ThroughputBytesPerSec is the data received from the agent since the
	// previous sample, per second.
	ThroughputBytesPerSec float64 `json:"throughput_bytes_per_sec"`
	// StagingBusy is the share of the interval (0–1) the replication
	// server spent writing to the staging store and waiting for it to be
	// durable.
	StagingBusy float64                `json:"staging_busy"`
	State       ferry.ReplicationState `json:"state"`
	// Agent is where the agent's sender spent the interval; absent when
	// the agent does not report it (older agents) or was not connected.
	Agent *AgentShares `json:"agent,omitempty"`
}

// AgentShares split the agent sender's time over an interval into shares
// (0–1, summing to about 1): reading and compressing source data, waiting
// on the network (the server's credit, hash replies, a full connection),
// held back by the bandwidth throttle, and idle with nothing to send.
type AgentShares struct {
	Read     float64 `json:"read"`
	Network  float64 `json:"network"`
	Throttle float64 `json:"throttle"`
	Idle     float64 `json:"idle"`
}

// Bottleneck names what limits a lagging server's replication.
type Bottleneck string

// Bottlenecks a diagnosis can name.
const (
	BottleneckNone            Bottleneck = "NONE"              // replication keeps up
	BottleneckUnknown         Bottleneck = "UNKNOWN"           // not enough history
	BottleneckNotSending      Bottleneck = "NOT_SENDING"       // paused, stopped, stalled or disconnected
	BottleneckThrottle        Bottleneck = "THROTTLE"          // the bandwidth throttle
	BottleneckStagingWrite    Bottleneck = "STAGING_WRITE"     // the replica store's writes
	BottleneckSourceOrNetwork Bottleneck = "SOURCE_OR_NETWORK" // the agent's disk reads or the network (an agent that does not report its timing)
	BottleneckSourceRead      Bottleneck = "SOURCE_READ"       // the agent reading the source disks
	BottleneckNetwork         Bottleneck = "NETWORK"           // the network between agent and replication server
	BottleneckAgentIdle       Bottleneck = "AGENT_IDLE"        // the agent had nothing to send: it learns of writes late
)

// Diagnosis says in plain words why a server's lag grows.
type Diagnosis struct {
	Bottleneck Bottleneck `json:"bottleneck"`
	Summary    string     `json:"summary"`
	// Limited is true when the figures cannot separate two causes; the
	// summary says which.
	Limited bool `json:"limited"`
}

// ServerHistory is a server's recent replication history and a diagnosis.
type ServerHistory struct {
	IntervalSeconds float64         `json:"interval_seconds"`
	Samples         []HistorySample `json:"samples"`
	Diagnosis       Diagnosis       `json:"diagnosis"`
}

// ServerUsage is one server's line of the usage report.
type ServerUsage struct {
	SourceServerID string `json:"source_server_id"`
	Hostname       string `json:"hostname"`
	// DiskBytes is the size of the source disks.
	DiskBytes int64 `json:"disk_bytes"`
	// LogicalBytes is the non-zero data the newest replica holds.
	LogicalBytes int64 `json:"logical_bytes"`
	// StoredBytes is what the staging store keeps for the server's disks
	// after deduplication and compression (chunks shared with other
	// servers count for each), plus their journals.
	StoredBytes int64 `json:"stored_bytes"`
	Snapshots   int   `json:"snapshots"`
	// DaysReplicated is the time the agent has spent connected with
	// replication running (not paused, stopped or disconnected), in days,
	// kept across restarts.
	DaysReplicated float64 `json:"days_replicated"`
	// BytesSent is the data the agent has sent (WRITE payloads as they
	// crossed the network, after compression) since the server paired,
	// kept in the metadata store across restarts.
	BytesSent int64 `json:"bytes_sent"`
}

// UsageReport is the usage of every live server.
type UsageReport struct {
	Time time.Time `json:"time"`
	// BytesSentSince is when the control plane started. BytesSent used to
	// count from then; it is now kept across restarts, so this is only
	// informative.
	BytesSentSince time.Time     `json:"bytes_sent_since"`
	Servers        []ServerUsage `json:"servers"`
	// StoreStoredBytes is what the whole staging store uses: shared chunks
	// count once.
	StoreStoredBytes int64 `json:"store_stored_bytes"`
}
