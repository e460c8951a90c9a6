package ferry

import (
	"strings"
	"time"
)

// SourceServer is a machine being migrated: its facts as the agent reported
// them, where it stands in the migration, and how it is replicated and
// launched.
type SourceServer struct {
	ID          string            `json:"id"`
	MachineID   string            `json:"machine_id"`
	Hostname    string            `json:"hostname"`
	OS          string            `json:"os"`
	Kernel      string            `json:"kernel"`
	CPUs        int               `json:"cpus"`
	RAMBytes    int64             `json:"ram_bytes"`
	NICs        []NIC             `json:"nics"`
	Disks       []Disk            `json:"disks"`
	Tags        map[string]string `json:"tags"`
	Lifecycle   LifecycleState    `json:"lifecycle_state"`
	Replication ReplicationInfo   `json:"replication"`
	// Desired is what the operator asked replication to do; the
	// replication server tells the agent, and Replication.State follows.
	Desired       DesiredReplication `json:"desired_replication"`
	Archived      bool               `json:"archived"`
	ApplicationID string             `json:"application_id,omitempty"`
	WaveID        string             `json:"wave_id,omitempty"`
	AgentVersion  string             `json:"agent_version,omitempty"`
	// AgentCertSerial is the serial of the one agent certificate the
	// replication server accepts for this server (pairing again or
	// renewing replaces it).
	AgentCertSerial string `json:"-"`
	// AgentCertPrevSerial is the certificate the agent renewed with, still
	// accepted until the agent connects with the renewed one: an agent
	// that stopped before saving its new certificate is not locked out.
	AgentCertPrevSerial string              `json:"-"`
	ReplicationSetup    ReplicationSettings `json:"replication_settings"`
	LaunchSetup         LaunchSettings      `json:"launch_settings"`
	// Launched is the newest test or cutover instance, if any.
	Launched   *LaunchedInstance `json:"launched_instance,omitempty"`
	LastSeenAt time.Time         `json:"last_seen_at,omitzero"`
	CreatedAt  time.Time         `json:"created_at"`
	UpdatedAt  time.Time         `json:"updated_at"`
}

// NIC is a network interface of a source server.
type NIC struct {
	Name string   `json:"name"`
	MAC  string   `json:"mac"`
	IPs  []string `json:"ips,omitempty"`
}

// Disk is a block device of a source server and what has been replicated
// of it.
type Disk struct {
	Name             string `json:"name"`
	SizeBytes        int64  `json:"size_bytes"`
	LogicalBlockSize int    `json:"logical_block_size"`
	Model            string `json:"model,omitempty"`
	Boot             bool   `json:"boot,omitempty"`
	ReplicatedBytes  int64  `json:"replicated_bytes"`
	RescannedBytes   int64  `json:"rescanned_bytes"`
	BackloggedBytes  int64  `json:"backlogged_bytes"`
	// SentBytes is the data the agent has sent of this disk since it was
	// first replicated (WRITE payloads as they crossed the network, so
	// after compression), kept across restarts of either side.
	SentBytes int64 `json:"sent_bytes"`
}

// ReplicationInfo is the live data-replication picture of a server.
type ReplicationInfo struct {
	State             ReplicationState      `json:"state"`
	ErrorCode         ReplicationErrorCode  `json:"error_code,omitempty"`
	ErrorMessage      string                `json:"error_message,omitempty"`
	Steps             []InitiationStepState `json:"initiation_steps,omitempty"`
	LagSeconds        float64               `json:"lag_seconds"`
	ETASeconds        float64               `json:"eta_seconds,omitempty"`
	LastSnapshotAt    time.Time             `json:"last_snapshot_at,omitzero"`
	ReplicationServer string                `json:"replication_server,omitempty"`
	// ReplicatingSeconds is the time the agent has spent connected with
	// replication running (not initiating, paused, stopped or
	// disconnected), added up by the replication server and kept across
	// restarts: the usage report's days replicated.
	ReplicatingSeconds float64 `json:"replicating_seconds,omitempty"`
}

// InitiationStepState is the status of one initiation step.
type InitiationStepState struct {
	Step   InitiationStep `json:"step"`
	Status StepStatus     `json:"status"`
}

// SentBytes is the sum of the data the agent sent of each disk.
func (s *SourceServer) SentBytes() int64 {
	var n int64
	for _, d := range s.Disks {
		n += d.SentBytes
	}
	return n
}

// TotalBytes is the sum of the sizes of the server's disks.
func (s *SourceServer) TotalBytes() int64 {
	var n int64
	for _, d := range s.Disks {
		n += d.SizeBytes
	}
	return n
}

// Clone returns a deep copy, so a store can hand out servers that callers
// may change without touching the store's own copy.
func (s *SourceServer) Clone() *SourceServer {
	c := *s
	c.NICs = append([]NIC(nil), s.NICs...)
	for i := range c.NICs {
		c.NICs[i].IPs = append([]string(nil), s.NICs[i].IPs...)
	}
	c.Disks = append([]Disk(nil), s.Disks...)
	if s.Tags != nil {
		c.Tags = make(map[string]string, len(s.Tags))
		for k, v := range s.Tags {
			c.Tags[k] = v
		}
	}
	c.Replication.Steps = append([]InitiationStepState(nil), s.Replication.Steps...)
	c.LaunchSetup = s.LaunchSetup.clone()
	if s.Launched != nil {
		li := *s.Launched
		li.Addresses = append([]string(nil), li.Addresses...)
		li.Forwards = append([]PortForward(nil), li.Forwards...)
		li.PostLaunch = append([]PostLaunchResult(nil), li.PostLaunch...)
		if li.Snapshots != nil {
			li.Snapshots = make(map[string]string, len(s.Launched.Snapshots))
			for k, v := range s.Launched.Snapshots {
				li.Snapshots[k] = v
			}
		}
		c.Launched = &li
	}
	return &c
}

// CertSerials is how a store keeps a server's two certificate serials in
// one column: the current one, then a comma and the previous one if any.
func (s *SourceServer) CertSerials() string {
	if s.AgentCertPrevSerial == "" {
		return s.AgentCertSerial
	}
	return s.AgentCertSerial + "," + s.AgentCertPrevSerial
}

// SetCertSerials sets both certificate serials from CertSerials' form (a
// lone serial, as stores kept before renewal existed, is the current one).
func (s *SourceServer) SetCertSerials(v string) {
	s.AgentCertSerial, s.AgentCertPrevSerial, _ = strings.Cut(v, ",")
}
