package launch

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// BootMode is how the instance's firmware boots the first disk.
type BootMode string

// Boot modes.
const (
	BIOS BootMode = "BIOS" // legacy BIOS, MBR boot code (the default)
	UEFI BootMode = "UEFI" // UEFI firmware (OVMF for QEMU)
)

// DiskSource is one disk of an instance: a snapshot served over NBD.
type DiskSource struct {
	// NBDURL names the export, as QEMU spells it:
	// nbd+unix:///EXPORT?socket=/path/to.sock or nbd://127.0.0.1:10809/EXPORT.
	NBDURL string
	// Size is the disk's size in bytes as the guest sees it; 0 means the
	// export's size. It may be larger than the export, never smaller.
	Size int64
	// Name is the source's name for the disk ("sda", "nvme0n1") and
	// Snapshot the id of the snapshot served; both are informational
	// (recorded by targets that keep a manifest) and may be empty.
	Name, Snapshot string
}

// Source describes the replicated server an instance is launched from.
// Targets that record provenance (the export target's manifest) keep it;
// others ignore it.
type Source struct {
	ServerID string `json:"server_id,omitempty"`
	Hostname string `json:"hostname,omitempty"`
	OS       string `json:"os,omitempty"`
	Kernel   string `json:"kernel,omitempty"`
	CPUs     int    `json:"cpus,omitempty"`
	RAMBytes int64  `json:"ram_bytes,omitempty"`
}

// PrepareFunc changes an instance's disks before it starts, for example to
// convert the guest for the target (package libguestfs). disks are the
// paths of the instance's own writable images (copy-on-write overlays or
// exported files), in the order of Spec.Disks; their formats are in
// formats ("qcow2", "raw", "vmdk"). It must never be handed a snapshot.
type PrepareFunc func(ctx context.Context, disks, formats []string) error

// Forward forwards a host TCP port to a guest TCP port (user-mode NAT).
type Forward struct {
	GuestPort int
	// HostPort is the port on the host; 0 picks a free one, which the
	// returned Instance reports.
	HostPort int
}

// NetworkMode is how an instance's network card is connected.
type NetworkMode string

// Network modes.
const (
	// NetUser is user-mode NAT (QEMU's slirp) with TCP port forwards from
	// the host: the default, which needs no host setup or privileges.
	NetUser NetworkMode = "user"
	// NetBridge attaches the network card to a host bridge through a tap
	// device the target creates and removes. Port forwards do not apply:
	// the guest is reached at its own address on the bridge's network.
	NetBridge NetworkMode = "bridge"
)

// Network says how an instance's network card is connected.
type Network struct {
	// Mode is NetUser when empty.
	Mode NetworkMode
	// Bridge is the host bridge of NetBridge.
	Bridge string
}

// Spec describes an instance to launch. It is a pure description: nothing
// exists until [Target.Launch].
type Spec struct {
	// Name is a label for the instance (letters, digits, '.', '_', '-'; at
	// most 63 bytes, starting with a letter or digit). Targets derive
	// instance IDs and file names from it.
	Name string
	// ID, when set, is the instance's ID instead of one the target makes
	// from Name (a valid name; vmdir.NewID makes one). A caller that records it
	// before Launch can terminate the instance after a crash that came
	// before Launch returned.
	ID string
	// Disks are attached in order; the first one boots.
	Disks     []DiskSource
	CPUs      int
	MemoryMiB int
	// BootMode defaults to BIOS.
	BootMode BootMode
	// Network is user-mode NAT unless it says otherwise.
	Network Network
	// Forwards are the TCP port forwards from the host into the guest
	// (user mode only).
	Forwards []Forward
	// WorkDir is where the target keeps the instance's files (overlays,
	// console log, control sockets); empty means the target's own
	// directory.
	WorkDir string
	// Source is the replicated server, for targets that record it.
	Source Source
	// Prepare, when set, is called once the instance's writable disks
	// exist and before the instance starts. Its error fails the launch,
	// which then cleans up as for any other failure.
	Prepare PrepareFunc
}

// State is the observed state of an instance.
type State string

// Instance states.
const (
	Running State = "RUNNING" // the VM process runs
	Stopped State = "STOPPED" // the VM process has exited (guest powered off or crashed)
	// Exported means the instance is image files to import elsewhere
	// (the export target): nothing runs.
	Exported State = "EXPORTED"
)

// Instance is a launched instance, as recorded by its target.
type Instance struct {
	ID     string // unique within the target; names its files
	Target string // the target's Name
	Name   string // Spec.Name
	State  State
	PID    int // the VM process, 0 when not applicable
	// Accel is how the guest's CPU is run ("kvm", "tcg"), when known.
	Accel string
	// ConsoleLog is the file the guest's serial console is written to.
	ConsoleLog string
	// Forwards are the port forwards with their host ports filled in.
	Forwards []Forward
	// Addresses are host:port addresses where the instance answers, one
	// for each forward, in the same order.
	Addresses []string
	// Overlays are the copy-on-write files holding the instance's writes.
	Overlays []string
	// Tap is the host tap device of a bridged instance's network card.
	Tap       string
	StartedAt time.Time
}

// Target runs instances.
//
// Contract, which launch/targettest checks for every implementation:
//   - Launch validates the spec, then starts the instance and returns once
//     the VM process runs (not once the guest has booted: that is for
//     post-launch checks). It never writes to the disks' sources; the
//     instance's writes go to overlays of its own. A target whose
//     instances are files, not machines (export), returns once the files
//     are complete, in state Exported.
//   - Spec.Prepare, when set, is called exactly once with the instance's
//     own writable disks after they are created and before the instance
//     starts (or, for files, before they are checksummed); its error fails
//     the launch.
//   - When Launch fails it cleans up everything it made: no overlay, file,
//     process or host port is left behind, and the error says why (see the
//     named errors below, which it wraps where they apply).
//   - Status reports an instance launched earlier, also by another Target
//     value configured alike (after a server restart); an unknown id gives
//     an error wrapping ErrNotFound.
//   - Terminate stops the instance (gracefully first, then forcibly) and
//     removes its files and forwards. It is idempotent: terminating an
//     unknown or already terminated instance returns nil.
//   - All methods are safe for concurrent use.
type Target interface {
	// Name is the target's registered name, such as "qemu".
	Name() string
	Launch(ctx context.Context, spec Spec) (*Instance, error)
	Status(ctx context.Context, id string) (*Instance, error)
	Terminate(ctx context.Context, id string) error
}

// Errors that targets wrap so that callers can tell causes apart.
var (
	ErrNotFound           = errors.New("instance not found")
	ErrInvalidSpec        = errors.New("invalid launch spec")
	ErrPortInUse          = errors.New("host port in use")
	ErrInsufficientMemory = errors.New("not enough memory")
	ErrUnavailable        = errors.New("target unavailable") // its hypervisor or tools are missing
	ErrNotSupported       = errors.New("not supported by this target")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ifNameRE is a Linux network interface name (IFNAMSIZ is 16 with the
// NUL); "." and ".." are not names.
var ifNameRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,14}$`)

// ValidName reports whether s is acceptable as an instance name or ID: it
// cannot escape a directory or need quoting.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Validate checks the parts of a spec every target needs. Errors wrap
// ErrInvalidSpec.
func (s *Spec) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, a...))
	}
	if !ValidName(s.Name) {
		return bad("name %q: use letters, digits, '.', '_' and '-', at most 63 bytes, starting with a letter or digit", s.Name)
	}
	if s.ID != "" && !ValidName(s.ID) {
		return bad("id %q: use letters, digits, '.', '_' and '-', at most 63 bytes, starting with a letter or digit", s.ID)
	}
	if len(s.Disks) == 0 {
		return bad("no disks")
	}
	for i, d := range s.Disks {
		if !validNBDURL(d.NBDURL) {
			return bad("disk %d: %q is not an NBD URL (nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)", i, d.NBDURL)
		}
		if d.Size < 0 {
			return bad("disk %d: negative size", i)
		}
	}
	if s.CPUs < 1 || s.CPUs > 1024 {
		return bad("CPUs %d: want 1 to 1024", s.CPUs)
	}
	if s.MemoryMiB < 16 {
		return bad("memory %d MiB: want at least 16", s.MemoryMiB)
	}
	switch s.BootMode {
	case "", BIOS, UEFI:
	default:
		return bad("boot mode %q: want BIOS or UEFI", s.BootMode)
	}
	switch s.Network.Mode {
	case "", NetUser:
		if s.Network.Bridge != "" {
			return bad("network: a bridge is for mode bridge only")
		}
	case NetBridge:
		if !ifNameRE.MatchString(s.Network.Bridge) {
			return bad("network: bridge %q: want a host interface name (1 to 15 letters, digits, '_', '.', '-')", s.Network.Bridge)
		}
		if len(s.Forwards) > 0 {
			return bad("network: port forwards are for user mode; a bridged guest is reached at its own address")
		}
	default:
		return bad("network mode %q: want user or bridge", s.Network.Mode)
	}
	hostPorts := map[int]bool{}
	guestPorts := map[int]bool{}
	for _, f := range s.Forwards {
		if f.GuestPort < 1 || f.GuestPort > 65535 {
			return bad("guest port %d out of range", f.GuestPort)
		}
		if f.HostPort < 0 || f.HostPort > 65535 {
			return bad("host port %d out of range", f.HostPort)
		}
		if f.HostPort != 0 && hostPorts[f.HostPort] {
			return bad("host port %d forwarded twice", f.HostPort)
		}
		if guestPorts[f.GuestPort] {
			return bad("guest port %d forwarded twice", f.GuestPort)
		}
		hostPorts[f.HostPort] = true
		guestPorts[f.GuestPort] = true
	}
	return nil
}

// validNBDURL accepts the NBD URI schemes QEMU understands and nothing
// else, so that a disk can never name a local file or another protocol.
func validNBDURL(s string) bool {
	u, err := url.Parse(s)
	if err != nil || strings.ContainsAny(s, "\x00\n") {
		return false
	}
	switch u.Scheme {
	case "nbd", "nbd+tcp":
		return u.Host != ""
	case "nbd+unix":
		return u.Host == "" && u.Query().Get("socket") != ""
	}
	return false
}
