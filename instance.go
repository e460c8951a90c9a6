package ferry

import "time"

// FirstBoot is what is known of a launched instance's first boot.
type FirstBoot string

// First boot states.
const (
	FirstBootWaiting   FirstBoot = "WAITING"
	FirstBootSucceeded FirstBoot = "SUCCEEDED"
	FirstBootUnknown   FirstBoot = "UNKNOWN"
	FirstBootStopped   FirstBoot = "STOPPED"
)

// LaunchedInstance is an instance launched from a server's replica by a
// test or cutover job.
type LaunchedInstance struct {
	ID        string       `json:"id"`
	JobID     string       `json:"job_id"`
	Kind      JobInitiator `json:"kind"` // START_TEST or START_CUTOVER
	Target    string       `json:"target"`
	FirstBoot FirstBoot    `json:"first_boot"`
	// Snapshots names the snapshot each disk was launched from.
	Snapshots  map[string]string  `json:"snapshots,omitempty"`
	ConsoleLog string             `json:"console_log,omitempty"`
	Addresses  []string           `json:"addresses,omitempty"`
	Forwards   []PortForward      `json:"forwards,omitempty"`
	PostLaunch []PostLaunchResult `json:"post_launch_actions,omitempty"`
	LaunchedAt time.Time          `json:"launched_at"`
	// TerminatedAt is set once the instance is gone.
	TerminatedAt time.Time `json:"terminated_at,omitzero"`
}

// PortForward maps a host port to a port of the instance.
type PortForward struct {
	HostPort  int `json:"host_port"`
	GuestPort int `json:"guest_port"`
}

// PostLaunchStatus is the outcome of one post-launch action.
type PostLaunchStatus string

// Post-launch action statuses.
const (
	PostLaunchInProgress PostLaunchStatus = "IN_PROGRESS"
	PostLaunchSuccess    PostLaunchStatus = "SUCCESS"
	PostLaunchFailed     PostLaunchStatus = "FAILED"
)

// PostLaunchResult is one post-launch action's execution, output kept.
type PostLaunchResult struct {
	ActionID   string           `json:"action_id"`
	Name       string           `json:"name"`
	Status     PostLaunchStatus `json:"status"`
	Output     string           `json:"output,omitempty"`
	StartedAt  time.Time        `json:"started_at"`
	FinishedAt time.Time        `json:"finished_at,omitzero"`
}
