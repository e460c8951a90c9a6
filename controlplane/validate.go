package controlplane

import (
	"fmt"
	"regexp"
	"unicode"
	"unicode/utf8"

	"github.com/ferrymigrate/ferry"
)

const (
	maxNameLen  = 128
	maxTags     = 50
	maxTagKey   = 128
	maxTagValue = 256
	maxDescLen  = 600
)

// checkName refuses empty, over-long or control-character names.
func checkName(field, v string) error {
	if v == "" {
		return badRequest("%s is required", field)
	}
	return checkText(field, v, maxNameLen)
}

func checkText(field, v string, max int) error {
	if len(v) > max {
		return badRequest("%s is longer than %d bytes", field, max)
	}
	if !utf8.ValidString(v) {
		return badRequest("%s is not valid UTF-8", field)
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return badRequest("%s contains a control character", field)
		}
	}
	return nil
}

func checkTags(tags map[string]string) error {
	if len(tags) > maxTags {
		return badRequest("at most %d tags, got %d", maxTags, len(tags))
	}
	for k, v := range tags {
		if err := checkName("tag key", k); err != nil {
			return err
		}
		if len(k) > maxTagKey {
			return badRequest("tag key %q is longer than %d bytes", k, maxTagKey)
		}
		if err := checkText(fmt.Sprintf("tag %q value", k), v, maxTagValue); err != nil {
			return err
		}
	}
	return nil
}

func checkReplicationSettings(r *ferry.ReplicationSettings) error {
	if r.BandwidthBytesPerSec < 0 {
		return badRequest("replication_settings.bandwidth_bytes_per_sec must not be negative")
	}
	if err := checkText("replication_settings.encryption_key_id", r.EncryptionKeyID, maxNameLen); err != nil {
		return err
	}
	if err := checkText("replication_settings.staging_store", r.StagingStore, maxNameLen); err != nil {
		return err
	}
	switch r.DataPlaneRouting {
	case "", "PRIVATE_IP", "PUBLIC_IP":
	default:
		return badRequest("replication_settings.data_plane_routing %q: want PRIVATE_IP or PUBLIC_IP", r.DataPlaneRouting)
	}
	if len(r.PointInTime) > 10 {
		return badRequest("replication_settings.point_in_time_policy: at most 10 rules")
	}
	for i, rule := range r.PointInTime {
		if rule.IntervalMinutes < 1 || rule.KeepMinutes < rule.IntervalMinutes {
			return badRequest("replication_settings.point_in_time_policy[%d]: interval_minutes must be ≥ 1 and keep_minutes ≥ interval_minutes", i)
		}
	}
	return checkText("replication_settings.replication_server", r.ReplicationServer, maxNameLen)
}

func checkLaunchSettings(l *ferry.LaunchSettings) error {
	switch l.Disposition {
	case ferry.DispositionStarted, ferry.DispositionStopped:
	default:
		return badRequest("launch_settings.launch_disposition %q: want STARTED or STOPPED", l.Disposition)
	}
	switch l.RightSizing {
	case ferry.RightSizingNone, ferry.RightSizingBasic:
	default:
		return badRequest("launch_settings.right_sizing %q: want NONE or BASIC", l.RightSizing)
	}
	switch l.BootMode {
	case ferry.BootLegacyBIOS, ferry.BootUEFI, ferry.BootUseSource:
	default:
		return badRequest("launch_settings.boot_mode %q: want LEGACY_BIOS, UEFI or USE_SOURCE", l.BootMode)
	}
	if l.CPUs < 1 || l.CPUs > 256 {
		return badRequest("launch_settings.cpus %d: want 1 to 256", l.CPUs)
	}
	if l.MemoryMiB < 64 || l.MemoryMiB > 4<<20 {
		return badRequest("launch_settings.memory_mib %d: want 64 to %d", l.MemoryMiB, 4<<20)
	}
	if err := checkName("launch_settings.target", l.Target); err != nil {
		return err
	}
	if err := checkNetwork(&l.Network); err != nil {
		return err
	}
	if len(l.PostLaunchActions) > 100 {
		return badRequest("launch_settings.post_launch_actions: at most 100")
	}
	for i, a := range l.PostLaunchActions {
		f := fmt.Sprintf("launch_settings.post_launch_actions[%d]", i)
		if err := checkName(f+".name", a.Name); err != nil {
			return err
		}
		if a.TimeoutSeconds < 0 || a.TimeoutSeconds > 24*3600 {
			return badRequest("%s.timeout_seconds %d: want 0 to 86400", f, a.TimeoutSeconds)
		}
		switch a.Deployment {
		case "TEST_AND_CUTOVER", "CUTOVER_ONLY", "TEST_ONLY":
		default:
			return badRequest("%s.deployment %q: want TEST_AND_CUTOVER, CUTOVER_ONLY or TEST_ONLY", f, a.Deployment)
		}
		if err := checkTags(a.Parameters); err != nil {
			return badRequest("%s.parameters: %v", f, err)
		}
	}
	return nil
}

// bridgeNameRE is a Linux interface name (IFNAMSIZ 16 with the NUL).
var bridgeNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

func checkNetwork(n *ferry.NetworkSettings) error {
	switch n.Mode {
	case "", ferry.NetworkUser:
		if n.Bridge != "" {
			return badRequest("launch_settings.network.bridge is for mode bridge only")
		}
	case ferry.NetworkBridge:
		if !bridgeNameRE.MatchString(n.Bridge) || n.Bridge == "." || n.Bridge == ".." {
			return badRequest("launch_settings.network.bridge %q: mode bridge needs a host bridge name (1 to 15 letters, digits, '_', '.', '-')", n.Bridge)
		}
		if len(n.Forwards) > 0 {
			return badRequest("launch_settings.network.forwards are for mode user only: a bridged guest is reached at its own address")
		}
	default:
		return badRequest("launch_settings.network.mode %q: want user or bridge", n.Mode)
	}
	if len(n.Forwards) > 100 {
		return badRequest("launch_settings.network.forwards: at most 100")
	}
	hosts, guests := map[int]bool{}, map[int]bool{}
	for i, f := range n.Forwards {
		if f.GuestPort < 1 || f.GuestPort > 65535 || f.HostPort < 0 || f.HostPort > 65535 {
			return badRequest("launch_settings.network.forwards[%d]: guest_port 1 to 65535, host_port 0 (any free) to 65535", i)
		}
		if guests[f.GuestPort] || (f.HostPort != 0 && hosts[f.HostPort]) {
			return badRequest("launch_settings.network.forwards[%d]: port forwarded twice", i)
		}
		guests[f.GuestPort], hosts[f.HostPort] = true, true
	}
	return nil
}
