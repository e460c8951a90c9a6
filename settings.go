package ferry

// ReplicationSettings say how a server's disks are replicated. Each server
// takes them from a template and may override any field.
type ReplicationSettings struct {
	// BandwidthBytesPerSec caps the agent's data transfer; 0 means no cap.
	BandwidthBytesPerSec int64 `json:"bandwidth_bytes_per_sec"`
	// EncryptionKeyID names the key that seals the server's replica.
	EncryptionKeyID string `json:"encryption_key_id"`
	// StagingStore names the replica store backend ("fs" or an s3 store).
	StagingStore string `json:"staging_store"`
	// PointInTime is the snapshot retention policy.
	PointInTime []RetentionRule `json:"point_in_time_policy"`
	// DataPlaneRouting is "PUBLIC_IP" or "PRIVATE_IP", as in MGN.
	DataPlaneRouting string `json:"data_plane_routing"`
	// ReplicationServer pins the server to one replication server; empty
	// lets the control plane choose.
	ReplicationServer string `json:"replication_server,omitempty"`
}

// RetentionRule keeps one snapshot every Interval for Keep.
type RetentionRule struct {
	IntervalMinutes int `json:"interval_minutes"`
	KeepMinutes     int `json:"keep_minutes"`
}

// DefaultPointInTimePolicy is every 10 minutes kept an hour, hourly kept a
// day, daily kept a week.
var DefaultPointInTimePolicy = []RetentionRule{
	{IntervalMinutes: 10, KeepMinutes: 60},
	{IntervalMinutes: 60, KeepMinutes: 24 * 60},
	{IntervalMinutes: 24 * 60, KeepMinutes: 7 * 24 * 60},
}

// DefaultReplicationSettings is the template every new server starts from.
func DefaultReplicationSettings() ReplicationSettings {
	return ReplicationSettings{
		EncryptionKeyID:  "default",
		StagingStore:     "fs",
		PointInTime:      append([]RetentionRule(nil), DefaultPointInTimePolicy...),
		DataPlaneRouting: "PRIVATE_IP",
	}
}

// LaunchDisposition says whether a launched instance is started.
type LaunchDisposition string

// Launch dispositions.
const (
	DispositionStopped LaunchDisposition = "STOPPED"
	DispositionStarted LaunchDisposition = "STARTED"
)

// RightSizing says whether CPUs and memory come from the source's facts.
type RightSizing string

// Right-sizing methods.
const (
	RightSizingNone  RightSizing = "NONE"
	RightSizingBasic RightSizing = "BASIC"
)

// BootMode is the firmware a launched instance boots with.
type BootMode string

// Boot modes.
const (
	BootLegacyBIOS BootMode = "LEGACY_BIOS"
	BootUEFI       BootMode = "UEFI"
	BootUseSource  BootMode = "USE_SOURCE"
)

// NetworkMode is how a launched instance's network card reaches a network.
type NetworkMode string

// Network modes.
const (
	// NetworkUser is user-mode NAT on the launch host with TCP port
	// forwards into the guest (the default; needs no host setup).
	NetworkUser NetworkMode = "user"
	// NetworkBridge attaches the instance to an existing host bridge
	// through a tap device, as a machine on that bridge's network.
	NetworkBridge NetworkMode = "bridge"
)

// NetworkSettings say how a launched instance is networked.
type NetworkSettings struct {
	// Mode is NetworkUser when empty.
	Mode NetworkMode `json:"mode,omitempty"`
	// Bridge is the host bridge of NetworkBridge.
	Bridge string `json:"bridge,omitempty"`
	// Forwards are TCP ports forwarded from the host into the guest in
	// user mode, besides those post-launch checks need; host port 0 picks
	// a free one.
	Forwards []PortForward `json:"forwards,omitempty"`
}

// LaunchSettings say how a server's instances are launched. Each server
// takes them from a template and may override any field.
type LaunchSettings struct {
	Disposition       LaunchDisposition  `json:"launch_disposition"`
	RightSizing       RightSizing        `json:"right_sizing"`
	CPUs              int                `json:"cpus"`
	MemoryMiB         int                `json:"memory_mib"`
	BootMode          BootMode           `json:"boot_mode"`
	Target            string             `json:"target"`
	Convert           bool               `json:"convert"`
	Network           NetworkSettings    `json:"network"`
	PostLaunchActions []PostLaunchAction `json:"post_launch_actions"`
}

func (l LaunchSettings) clone() LaunchSettings {
	c := l
	c.Network.Forwards = append([]PortForward(nil), l.Network.Forwards...)
	c.PostLaunchActions = append([]PostLaunchAction(nil), l.PostLaunchActions...)
	for i := range c.PostLaunchActions {
		p := l.PostLaunchActions[i].Parameters
		if p != nil {
			c.PostLaunchActions[i].Parameters = make(map[string]string, len(p))
			for k, v := range p {
				c.PostLaunchActions[i].Parameters[k] = v
			}
		}
	}
	return c
}

// DefaultLaunchSettings is the template every new server starts from.
func DefaultLaunchSettings() LaunchSettings {
	return LaunchSettings{
		Disposition: DispositionStarted,
		RightSizing: RightSizingBasic,
		CPUs:        1,
		MemoryMiB:   1024,
		BootMode:    BootUseSource,
		Target:      "qemu",
		Convert:     true,
	}
}

// PostLaunchAction is a step run after an instance launches: a validation
// check or a configuration script.
type PostLaunchAction struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Active         bool              `json:"active"`
	Order          int               `json:"order"`
	TimeoutSeconds int               `json:"timeout_seconds"`
	MustSucceed    bool              `json:"must_succeed_for_cutover"`
	Deployment     string            `json:"deployment"` // TEST_AND_CUTOVER, CUTOVER_ONLY, TEST_ONLY
	Category       string            `json:"category"`   // VALIDATION, CONFIGURATION, ...
	Parameters     map[string]string `json:"parameters,omitempty"`
}

// Template is a named set of replication and launch settings that new
// servers copy.
type Template struct {
	ID          string              `json:"id"`
	Name        string              `json:"name"`
	Replication ReplicationSettings `json:"replication_settings"`
	Launch      LaunchSettings      `json:"launch_settings"`
}
