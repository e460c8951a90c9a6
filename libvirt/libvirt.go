package libvirt

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/ferrymigrate/ferry/guestagent"
	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/launch/vmdir"
	"github.com/ferrymigrate/ferry/qemu"
)

var _ launch.Target = (*Target)(nil)

// Defaults for [Target]'s fields.
const (
	DefaultSocket          = "/var/run/libvirt/libvirt-sock"
	DefaultURI             = "qemu:///system"
	DefaultEmulator        = "qemu-system-x86_64"
	DefaultImgBinary       = "qemu-img"
	DefaultForwardAddr     = "127.0.0.1"
	DefaultShutdownTimeout = 30 * time.Second
	DefaultOVMFCode        = "/usr/share/OVMF/OVMF_CODE.fd"
	DefaultOVMFVars        = "/usr/share/OVMF/OVMF_VARS.fd"
	// DomainPrefix starts the name of every domain the target defines.
	DomainPrefix = "ferry-"
)

// dialTimeout bounds a connection to libvirtd.
const dialTimeout = 5 * time.Second

// Target launches instances as transient libvirt domains. Dir must be set;
// the other fields have defaults. A Target must not be copied after first
// use.
type Target struct {
	// Dir holds one state file per instance (ID.json) and, unless a
	// Spec's WorkDir says otherwise, each instance's directory (ID/).
	Dir string
	// Socket is libvirtd's unix socket and URI the driver to open on it.
	// Defaults: DefaultSocket, DefaultURI. libvirtd must run on this host:
	// the overlays and the console log are local files.
	Socket, URI string
	// Emulator is the QEMU binary the domains run, and ImgBinary the
	// qemu-img that creates overlays; looked up on PATH when not
	// absolute. Defaults: DefaultEmulator, DefaultImgBinary.
	Emulator, ImgBinary string
	// Accel is "kvm", "tcg" or empty to probe as the qemu target does
	// (qemu.DetectAccel); TCG gives domain type "qemu".
	Accel string
	// ForwardAddr is the host address port forwards listen on. Default:
	// DefaultForwardAddr (loopback only).
	ForwardAddr string
	// ShutdownTimeout is how long Terminate waits for the guest to power
	// off after an ACPI shutdown request before it destroys the domain.
	ShutdownTimeout time.Duration
	// GuestAgent adds a virtio-serial channel org.qemu.guest_agent.0 to
	// each domain (a unix socket agent.sock in the instance's directory),
	// so that package guestagent can run commands in a guest that runs
	// qemu-ga.
	GuestAgent bool
	// OVMFCode and OVMFVars are the UEFI firmware and its variable store
	// template. Defaults: DefaultOVMFCode, DefaultOVMFVars.
	OVMFCode, OVMFVars string
	// Logger receives one line per launch and termination; nil discards.
	Logger *slog.Logger

	mu sync.Mutex // serialises host port selection and domain start
}

// New returns a Target keeping its state in dir.
func New(dir string) *Target { return &Target{Dir: dir} }

// Name implements [launch.Target].
func (t *Target) Name() string { return "libvirt" }

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func (t *Target) logger() *slog.Logger {
	if t.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Logger
}

// connect opens a connection to libvirtd. Errors wrap
// launch.ErrUnavailable.
func (t *Target) connect() (*golibvirt.Libvirt, error) {
	sock := or(t.Socket, DefaultSocket)
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(sock), dialers.WithLocalTimeout(dialTimeout)))
	if err := l.ConnectToURI(golibvirt.ConnectURI(or(t.URI, DefaultURI))); err != nil {
		return nil, fmt.Errorf("libvirt: %w: connect to libvirtd on %s: %v (install libvirt-daemon-system and start libvirtd: scripts/setup.sh)", launch.ErrUnavailable, sock, err)
	}
	return l, nil
}

// Available reports whether libvirtd answers on the target's socket, with
// its library and hypervisor versions. Errors wrap launch.ErrUnavailable.
func (t *Target) Available(ctx context.Context) (string, error) {
	l, err := t.connect()
	if err != nil {
		return "", err
	}
	defer l.Disconnect()
	lib, err := l.ConnectGetLibVersion()
	if err != nil {
		return "", fmt.Errorf("libvirt: %w: version: %v", launch.ErrUnavailable, err)
	}
	hv, err := l.ConnectGetVersion()
	if err != nil {
		return "", fmt.Errorf("libvirt: %w: hypervisor version: %v", launch.ErrUnavailable, err)
	}
	return fmt.Sprintf("libvirt %s, hypervisor %s", version(lib), version(hv)), nil
}

// version formats libvirt's major*1e6+minor*1e3+micro.
func version(v uint64) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}

// state is the JSON state file of an instance.
type state struct {
	ID         string           `json:"id"`
	Name       string           `json:"name"`
	Domain     string           `json:"domain"`
	UUID       string           `json:"uuid"`
	Dir        string           `json:"dir"`
	PID        int              `json:"pid"`
	Accel      string           `json:"accel"`
	ConsoleLog string           `json:"console_log"`
	AgentSock  string           `json:"agent_sock,omitempty"`
	Overlays   []string         `json:"overlays"`
	Forwards   []launch.Forward `json:"forwards"`
	Addresses  []string         `json:"addresses"`
	StartedAt  time.Time        `json:"started_at"`
}

func (t *Target) states() vmdir.States { return vmdir.States{Dir: t.Dir, Target: "libvirt"} }

// Launch implements [launch.Target]: qcow2 overlays over the NBD exports,
// Spec.Prepare, then a transient domain. Errors wrap
// launch.ErrInvalidSpec, launch.ErrUnavailable (libvirtd unreachable,
// QEMU missing), launch.ErrInsufficientMemory, launch.ErrPortInUse or
// launch.ErrNotSupported (UEFI without OVMF) where they apply.
func (t *Target) Launch(ctx context.Context, spec launch.Spec) (_ *launch.Instance, err error) {
	if t.Dir == "" {
		return nil, errors.New("libvirt: Target.Dir is not set")
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("libvirt: %w", err)
	}
	if spec.Network.Mode == launch.NetBridge {
		return nil, fmt.Errorf("libvirt: network mode bridge: %w yet (use the qemu target, or network mode user)", launch.ErrNotSupported)
	}
	emu, err := exec.LookPath(or(t.Emulator, DefaultEmulator))
	if err != nil {
		return nil, fmt.Errorf("libvirt: %w: %v (install qemu-system-x86: scripts/setup.sh)", launch.ErrUnavailable, err)
	}
	img, err := exec.LookPath(or(t.ImgBinary, DefaultImgBinary))
	if err != nil {
		return nil, fmt.Errorf("libvirt: %w: %v (install qemu-utils: scripts/setup.sh)", launch.ErrUnavailable, err)
	}
	if spec.BootMode == launch.UEFI {
		for _, f := range []string{or(t.OVMFCode, DefaultOVMFCode), or(t.OVMFVars, DefaultOVMFVars)} {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("libvirt: UEFI boot: %w: firmware %s missing (install ovmf)", launch.ErrNotSupported, f)
			}
		}
	}
	l, err := t.connect()
	if err != nil {
		return nil, err
	}
	defer l.Disconnect()
	if avail, err := availableMiB(l); err == nil && int64(spec.MemoryMiB) > avail {
		return nil, fmt.Errorf("libvirt: %w: the instance wants %d MiB, the host has %d MiB available", launch.ErrInsufficientMemory, spec.MemoryMiB, avail)
	}

	id := vmdir.InstanceID(spec)
	dir, err := t.states().Create(spec.WorkDir, id, "agent.sock")
	if err != nil {
		return nil, err
	}
	st := &state{
		ID:         id,
		Name:       spec.Name,
		Domain:     DomainPrefix + id,
		Dir:        dir,
		ConsoleLog: filepath.Join(dir, "console.log"),
	}
	if t.GuestAgent {
		st.AgentSock = filepath.Join(dir, "agent.sock")
	}
	defer func() {
		if err != nil {
			t.cleanup(l, st)
		}
	}()
	st.Overlays, err = vmdir.Overlays(ctx, img, dir, spec)
	if err != nil {
		return nil, fmt.Errorf("libvirt: %w", err)
	}
	// The console log exists before the domain starts, owned by this
	// process's user, which QEMU runs as (see secLabelXML).
	if err := os.WriteFile(st.ConsoleLog, nil, 0o600); err != nil {
		return nil, fmt.Errorf("libvirt: create console log: %w", err)
	}
	st.Accel = t.Accel
	if st.Accel == "" {
		st.Accel = qemu.DetectAccel(ctx, emu)
	}
	cfg := domainConfig{
		Name: st.Domain, ID: id, Accel: st.Accel, Emulator: emu,
		Overlays: st.Overlays, ConsoleLog: st.ConsoleLog, AgentSock: st.AgentSock,
		ForwardAddr: or(t.ForwardAddr, DefaultForwardAddr),
		UID:         os.Getuid(), GID: os.Getgid(),
	}
	if spec.BootMode == launch.UEFI {
		cfg.OVMFCode, cfg.NVRAM = or(t.OVMFCode, DefaultOVMFCode), filepath.Join(dir, "OVMF_VARS.fd")
		if err := vmdir.CopyFile(or(t.OVMFVars, DefaultOVMFVars), cfg.NVRAM); err != nil {
			return nil, fmt.Errorf("libvirt: copy UEFI variables: %w", err)
		}
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	st.Forwards, err = vmdir.PickPorts(cfg.ForwardAddr, spec.Forwards)
	if err != nil {
		return nil, fmt.Errorf("libvirt: %w", err)
	}
	cfg.Forwards = st.Forwards
	st.Addresses = vmdir.Addresses(cfg.ForwardAddr, st.Forwards)
	doc, err := buildDomain(spec, cfg)
	if err != nil {
		return nil, fmt.Errorf("libvirt: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "domain.xml"), doc, 0o600); err != nil {
		return nil, fmt.Errorf("libvirt: %w", err)
	}
	// The state goes down before the domain exists: the domain outlives
	// the Ferry server, and a server killed before the second write below
	// could otherwise never find it to terminate it (lookup takes a state
	// without a UUID by its domain name).
	if err := t.states().Write(id, st); err != nil {
		return nil, err
	}
	start := time.Now()
	// Autodestroy is not set: the domain outlives this connection and the
	// Ferry server, like the qemu target's daemonized QEMU.
	dom, err := l.DomainCreateXML(string(doc), 0)
	if err != nil {
		msg := err.Error()
		switch {
		case strings.Contains(msg, "host forwarding rule"):
			return nil, fmt.Errorf("libvirt: %w: %s", launch.ErrPortInUse, msg)
		case strings.Contains(msg, "cannot set up guest memory"):
			return nil, fmt.Errorf("libvirt: %w: %s", launch.ErrInsufficientMemory, msg)
		}
		return nil, fmt.Errorf("libvirt: create domain %s: %w", st.Domain, err)
	}
	st.UUID = uuidString(dom.UUID)
	st.PID = domainPID(st.Domain)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("libvirt: launch: %w", ctx.Err())
	}
	st.StartedAt = time.Now().UTC()
	if err := t.states().Write(id, st); err != nil {
		return nil, err
	}
	t.logger().Info("libvirt: launched", "id", id, "domain", st.Domain, "pid", st.PID, "accel", st.Accel, "addresses", st.Addresses, "start", time.Since(start))
	return st.instance(launch.Running), nil
}

// lookup finds st's domain; ok is false when it no longer exists (a
// transient domain disappears when it stops) or is another domain of the
// same name.
func lookup(l *golibvirt.Libvirt, st *state) (dom golibvirt.Domain, ok bool, err error) {
	dom, err = l.DomainLookupByName(st.Domain)
	if golibvirt.IsNotFound(err) {
		return dom, false, nil
	}
	if err != nil {
		return dom, false, fmt.Errorf("libvirt: look up domain %s: %w", st.Domain, err)
	}
	return dom, st.UUID == "" || uuidString(dom.UUID) == st.UUID, nil
}

// running reports whether dom's state is one with a live QEMU process.
func running(l *golibvirt.Libvirt, dom golibvirt.Domain) (bool, error) {
	s, _, err := l.DomainGetState(dom, 0)
	if golibvirt.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("libvirt: domain state: %w", err)
	}
	switch golibvirt.DomainState(s) {
	case golibvirt.DomainShutoff, golibvirt.DomainCrashed, golibvirt.DomainNostate:
		return false, nil
	}
	return true, nil
}

// Status implements [launch.Target].
func (t *Target) Status(ctx context.Context, id string) (*launch.Instance, error) {
	st, err := t.readState(id)
	if err != nil {
		return nil, err
	}
	l, err := t.connect()
	if err != nil {
		return nil, err
	}
	defer l.Disconnect()
	dom, ok, err := lookup(l, st)
	if err != nil {
		return nil, err
	}
	s := launch.Stopped
	if ok {
		up, err := running(l, dom)
		if err != nil {
			return nil, err
		}
		if up {
			s = launch.Running
		}
	}
	return st.instance(s), nil
}

// Terminate implements [launch.Target]: an ACPI shutdown request, up to
// ShutdownTimeout for the guest to power off, then the domain is
// destroyed; then the instance's files are removed.
func (t *Target) Terminate(ctx context.Context, id string) error {
	st, err := t.readState(id)
	if errors.Is(err, launch.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	l, err := t.connect()
	if err != nil {
		return fmt.Errorf("libvirt: terminate %s: %w", id, err)
	}
	defer l.Disconnect()
	start := time.Now()
	grace := or(t.ShutdownTimeout, DefaultShutdownTimeout)
	if st.StartedAt.IsZero() {
		// Its launch never finished (its server died in it): no guest
		// to shut down gracefully, and the restarted server should not
		// wait for one.
		grace = 0
	}
	how, err := t.stop(ctx, l, st, grace)
	if err != nil {
		return fmt.Errorf("libvirt: terminate %s: %w", id, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("libvirt: terminate %s: %w", id, err)
	}
	if err := os.RemoveAll(st.Dir); err != nil {
		return fmt.Errorf("libvirt: terminate %s: remove files: %w", id, err)
	}
	if err := t.states().Remove(id); err != nil {
		return fmt.Errorf("libvirt: terminate %s: %w", id, err)
	}
	t.logger().Info("libvirt: terminated", "id", id, "how", how, "took", time.Since(start))
	return nil
}

// stop ends st's domain: shutdown, then destroy after grace. It says how.
func (t *Target) stop(ctx context.Context, l *golibvirt.Libvirt, st *state, grace time.Duration) (string, error) {
	dom, ok, err := lookup(l, st)
	if err != nil {
		return "", err
	}
	if !ok {
		return "gone", nil
	}
	if up, err := running(l, dom); err != nil {
		return "", err
	} else if up && grace > 0 {
		if err := l.DomainShutdown(dom); err == nil && waitGone(ctx, l, st, grace) {
			return "shutdown", nil
		}
	}
	if err := l.DomainDestroy(dom); err != nil && !golibvirt.IsNotFound(err) {
		return "", fmt.Errorf("destroy domain %s: %w", st.Domain, err)
	}
	if !waitGone(ctx, l, st, 10*time.Second) {
		return "", fmt.Errorf("domain %s still exists after destroy", st.Domain)
	}
	return "destroy", nil
}

// waitGone polls until st's domain no longer runs, for at most d.
func waitGone(ctx context.Context, l *golibvirt.Libvirt, st *state, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		dom, ok, err := lookup(l, st)
		if err == nil && !ok {
			return true
		}
		if err == nil {
			if up, err := running(l, dom); err == nil && !up {
				return true
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cleanup undoes a failed launch.
func (t *Target) cleanup(l *golibvirt.Libvirt, st *state) {
	t.stop(context.Background(), l, st, 0)
	os.RemoveAll(st.Dir)
	t.states().Remove(st.ID)
}

func (t *Target) readState(id string) (*state, error) {
	var st state
	if err := t.states().Read(id, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

func (st *state) instance(s launch.State) *launch.Instance {
	return &launch.Instance{
		ID:         st.ID,
		Target:     "libvirt",
		Name:       st.Name,
		State:      s,
		PID:        st.PID,
		Accel:      st.Accel,
		ConsoleLog: st.ConsoleLog,
		Forwards:   append([]launch.Forward(nil), st.Forwards...),
		Addresses:  append([]string(nil), st.Addresses...),
		Overlays:   append([]string(nil), st.Overlays...),
		StartedAt:  st.StartedAt,
	}
}

// AgentSocket returns the unix socket of the instance's guest agent
// channel, or an error when the instance has none (Target.GuestAgent was
// off when it launched).
func (t *Target) AgentSocket(id string) (string, error) {
	st, err := t.agentState(id)
	if err != nil {
		return "", err
	}
	return st.AgentSock, nil
}

// AgentChannel names instance id's guest agent channel.
func (t *Target) AgentChannel(id string) (string, error) {
	st, err := t.agentState(id)
	if err != nil {
		return "", err
	}
	return "libvirt domain " + st.Domain, nil
}

// agentState reads instance id's state, which must have an agent channel.
func (t *Target) agentState(id string) (*state, error) {
	st, err := t.readState(id)
	if err != nil {
		return nil, err
	}
	if st.AgentSock == "" {
		return nil, fmt.Errorf("libvirt: instance %s: %w: launched without a guest agent channel", id, launch.ErrNotSupported)
	}
	return st, nil
}

// OpenAgent is instance id's guest agent through libvirt
// (virDomainQemuAgentCommand): libvirtd connects to the domain's agent
// channel itself once the guest opens it, and the channel's socket takes
// one client at a time, so a direct connection would wait for libvirtd
// to let go. Commands fail until the guest's agent is up (guestagent.Wait
// retries them).
func (t *Target) OpenAgent(ctx context.Context, id string) (guestagent.Agent, error) {
	st, err := t.agentState(id)
	if err != nil {
		return nil, err
	}
	l, err := t.connect()
	if err != nil {
		return nil, err
	}
	dom, ok, err := lookup(l, st)
	if err == nil && !ok {
		err = fmt.Errorf("libvirt: instance %s: %w: domain %s is gone", id, launch.ErrNotFound, st.Domain)
	}
	if err != nil {
		l.Disconnect()
		return nil, err
	}
	return &domainAgent{l: l, Agent: guestagent.Via(func(ctx context.Context, cmd string) (string, error) {
		timeout := int32(5)
		if d, ok := ctx.Deadline(); ok {
			timeout = int32(max(1, min(time.Until(d), 60*time.Second)/time.Second))
		}
		out, err := l.QEMUDomainAgentCommand(dom, cmd, timeout, 0)
		if err != nil {
			return "", fmt.Errorf("libvirt: guest agent of domain %s: %w", st.Domain, err)
		}
		if len(out) == 0 {
			return "", fmt.Errorf("libvirt: guest agent of domain %s: no answer", st.Domain)
		}
		return out[0], nil
	})}, nil
}

// domainAgent is a guest agent through a libvirt connection it owns.
type domainAgent struct {
	guestagent.Agent
	l *golibvirt.Libvirt
}

func (a *domainAgent) Close() error { return a.l.Disconnect() }

// availableMiB is the host's free memory as libvirt reports it: free plus
// buffers and page cache, which the kernel gives back on demand.
func availableMiB(l *golibvirt.Libvirt) (int64, error) {
	const allCells = -1
	_, n, err := l.NodeGetMemoryStats(0, allCells, 0)
	if err != nil {
		return 0, err
	}
	stats, _, err := l.NodeGetMemoryStats(n, allCells, 0)
	if err != nil {
		return 0, err
	}
	var kib uint64
	for _, s := range stats {
		switch s.Field {
		case "free", "buffers", "cached":
			kib += s.Value
		}
	}
	if kib == 0 {
		return 0, errors.New("no memory statistics")
	}
	return int64(kib / 1024), nil
}

// domainPID reads the pid of a domain's QEMU from the pidfile libvirtd's
// system instance keeps; 0 when it cannot (another run directory).
func domainPID(domain string) int {
	b, err := os.ReadFile(filepath.Join("/run/libvirt/qemu", domain+".pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func uuidString(u golibvirt.UUID) string { return hex.EncodeToString(u[:]) }
