package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrymigrate/ferry/guestagent"
	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/launch/vmdir"
)

var _ launch.Target = (*Target)(nil)

// Defaults for [Target]'s fields.
const (
	DefaultBinary          = "qemu-system-x86_64"
	DefaultImgBinary       = "qemu-img"
	DefaultForwardAddr     = "127.0.0.1"
	DefaultShutdownTimeout = 30 * time.Second
	DefaultOVMFCode        = "/usr/share/OVMF/OVMF_CODE.fd"
	DefaultOVMFVars        = "/usr/share/OVMF/OVMF_VARS.fd"
)

// startTimeout bounds QEMU's start-up, until -daemonize returns.
const startTimeout = time.Minute

// Target launches instances as qemu-system-x86_64 processes. Dir must be
// set; the other fields have defaults. A Target must not be copied after
// first use.
type Target struct {
	// Dir holds one state file per instance (ID.json) and, unless a
	// Spec's WorkDir says otherwise, each instance's directory (ID/).
	Dir string
	// Binary and ImgBinary are the QEMU programs, looked up on PATH when
	// not absolute. Defaults: DefaultBinary, DefaultImgBinary.
	Binary, ImgBinary string
	// Accel is "kvm", "tcg" or empty to probe (see the package doc).
	Accel string
	// ForwardAddr is the host address port forwards listen on. Default:
	// DefaultForwardAddr (loopback only).
	ForwardAddr string
	// ShutdownTimeout is how long Terminate waits for the guest to power
	// off after an ACPI power button press before it quits QEMU.
	// Default: DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// OVMFCode and OVMFVars are the UEFI firmware and its variable store
	// template. Defaults: DefaultOVMFCode, DefaultOVMFVars.
	OVMFCode, OVMFVars string
	// GuestAgent gives each instance a virtio-serial channel
	// org.qemu.guest_agent.0 whose host end is the unix socket agent.sock
	// in the instance's directory (see AgentSocket), for package
	// guestagent to run commands in a guest that runs qemu-ga.
	GuestAgent bool
	// Logger receives one line per launch and termination; nil discards.
	Logger *slog.Logger

	mu sync.Mutex // serialises host port selection and QEMU's start
}

// New returns a Target keeping its state in dir.
func New(dir string) *Target { return &Target{Dir: dir} }

// Name implements [launch.Target].
func (t *Target) Name() string { return "qemu" }

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

// state is the JSON state file of an instance.
type state struct {
	ID         string           `json:"id"`
	Name       string           `json:"name"`
	Dir        string           `json:"dir"`
	PID        int              `json:"pid"`
	Accel      string           `json:"accel"`
	QMP        string           `json:"qmp"`
	ConsoleLog string           `json:"console_log"`
	AgentSock  string           `json:"agent_sock,omitempty"`
	Tap        string           `json:"tap,omitempty"` // bridged network card
	Bridge     string           `json:"bridge,omitempty"`
	MAC        string           `json:"mac,omitempty"`
	OVMFVars   string           `json:"ovmf_vars,omitempty"` // the instance's UEFI variable store
	Overlays   []string         `json:"overlays"`
	Forwards   []launch.Forward `json:"forwards"`
	Addresses  []string         `json:"addresses"`
	StartedAt  time.Time        `json:"started_at"`
}

func (t *Target) states() vmdir.States { return vmdir.States{Dir: t.Dir, Target: "qemu"} }

// escapeOpt escapes a value for a QEMU option list, where "," separates
// options and ",," is a literal comma.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Launch implements [launch.Target]. Errors wrap launch.ErrInvalidSpec,
// launch.ErrUnavailable (QEMU missing), launch.ErrInsufficientMemory,
// launch.ErrPortInUse or launch.ErrNotSupported (UEFI without OVMF) where
// they apply.
func (t *Target) Launch(ctx context.Context, spec launch.Spec) (_ *launch.Instance, err error) {
	if t.Dir == "" {
		return nil, errors.New("qemu: Target.Dir is not set")
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	bin, err := exec.LookPath(or(t.Binary, DefaultBinary))
	if err != nil {
		return nil, fmt.Errorf("qemu: %w: QEMU binary %s not found: %v (install qemu-system-x86 with scripts/setup.sh, or correct the server's qemu_binary setting)", launch.ErrUnavailable, or(t.Binary, DefaultBinary), err)
	}
	img, err := exec.LookPath(or(t.ImgBinary, DefaultImgBinary))
	if err != nil {
		return nil, fmt.Errorf("qemu: %w: %v (install qemu-utils: scripts/setup.sh)", launch.ErrUnavailable, err)
	}
	if spec.BootMode == launch.UEFI {
		for _, f := range []string{or(t.OVMFCode, DefaultOVMFCode), or(t.OVMFVars, DefaultOVMFVars)} {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("qemu: UEFI boot: %w: firmware %s missing (install ovmf)", launch.ErrNotSupported, f)
			}
		}
	}
	if avail, err := memAvailableMiB(); err == nil && int64(spec.MemoryMiB) > avail {
		return nil, fmt.Errorf("qemu: %w: the instance wants %d MiB, the host has %d MiB available", launch.ErrInsufficientMemory, spec.MemoryMiB, avail)
	}

	// A fixed host port that is taken fails now, before overlays and a
	// conversion that can take a minute; it is checked again when QEMU
	// binds it.
	if _, err := vmdir.PickPorts(or(t.ForwardAddr, DefaultForwardAddr), spec.Forwards); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}

	id := vmdir.InstanceID(spec)
	// agent.sock is the longest socket name it may hold (with GuestAgent).
	dir, err := t.states().Create(spec.WorkDir, id, "agent.sock")
	if err != nil {
		return nil, err
	}
	st := &state{
		ID:         id,
		Name:       spec.Name,
		Dir:        dir,
		QMP:        filepath.Join(dir, "qmp.sock"),
		ConsoleLog: filepath.Join(dir, "console.log"),
	}
	if t.GuestAgent {
		st.AgentSock = filepath.Join(dir, "agent.sock")
	}
	defer func() {
		if err != nil {
			t.cleanup(st)
		}
	}()
	st.Overlays, err = vmdir.Overlays(ctx, img, dir, spec)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}

	st.Accel = t.Accel
	if st.Accel == "" {
		st.Accel = detectAccel(ctx, bin)
	}
	fwdAddr := or(t.ForwardAddr, DefaultForwardAddr)

	if spec.Network.Mode == launch.NetBridge {
		st.Tap, st.Bridge, st.MAC = tapName(id), spec.Network.Bridge, randomMAC()
		if err := createTap(st.Tap, st.Bridge); err != nil {
			st.Tap = "" // not made: nothing for cleanup to remove
			return nil, fmt.Errorf("qemu: %w", err)
		}
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	st.Forwards, err = vmdir.PickPorts(fwdAddr, spec.Forwards)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	st.Addresses = vmdir.Addresses(fwdAddr, st.Forwards)
	if spec.BootMode == launch.UEFI {
		// Each instance writes its own copy of the variable store (boot
		// entries); the firmware itself is shared and read-only.
		st.OVMFVars = filepath.Join(dir, "OVMF_VARS.fd")
		if err := vmdir.CopyFile(or(t.OVMFVars, DefaultOVMFVars), st.OVMFVars); err != nil {
			return nil, fmt.Errorf("qemu: copy UEFI variables: %w", err)
		}
	}
	argv := t.argv(st, spec, fwdAddr)
	errLog := filepath.Join(dir, "qemu.err")
	ef, err := os.Create(errLog)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	// Not ctx: killing QEMU's parent half-way through -daemonize could
	// leave a daemon without a pidfile. QEMU initialises in well under a
	// minute; ctx is checked once it has.
	startCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), startTimeout)
	defer cancel()
	// The state goes down before QEMU starts: the daemon outlives the
	// Ferry server, and one killed before the second write below could
	// otherwise never find it to terminate it (Terminate reads the PID
	// from the pidfile then).
	if err := t.states().Write(id, st); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(startCtx, bin, argv...)
	cmd.Stdout, cmd.Stderr = ef, ef
	cmd.Dir = dir
	start := time.Now()
	runErr := cmd.Run() // returns once the daemonized QEMU has initialised
	ef.Close()
	if pid, err := readPID(filepath.Join(dir, "qemu.pid")); err == nil {
		st.PID = pid
	}
	if runErr == nil && ctx.Err() != nil {
		return nil, fmt.Errorf("qemu: launch: %w", ctx.Err())
	}
	if runErr != nil {
		msg, _ := os.ReadFile(errLog)
		msg = bytes.TrimSpace(msg)
		if bytes.Contains(msg, []byte("host forwarding rule")) {
			return nil, fmt.Errorf("qemu: %w: %s", launch.ErrPortInUse, msg)
		}
		if bytes.Contains(msg, []byte("cannot set up guest memory")) {
			return nil, fmt.Errorf("qemu: %w: %s", launch.ErrInsufficientMemory, msg)
		}
		return nil, fmt.Errorf("qemu: start %s: %w: %s", bin, runErr, msg)
	}
	if st.PID == 0 {
		return nil, errors.New("qemu: QEMU started but wrote no pidfile")
	}
	st.StartedAt = time.Now().UTC()
	if err := t.states().Write(id, st); err != nil {
		return nil, err
	}
	t.logger().Info("qemu: launched", "id", id, "pid", st.PID, "accel", st.Accel, "addresses", st.Addresses, "start", time.Since(start))
	return st.instance(launch.Running), nil
}

// argv builds QEMU's arguments; never a shell string.
func (t *Target) argv(st *state, spec launch.Spec, fwdAddr string) []string {
	cpu := "max"
	if st.Accel == "kvm" {
		cpu = "host"
	}
	a := []string{
		"-name", "guest=" + escapeOpt(st.ID),
		"-machine", "pc", "-accel", st.Accel, "-cpu", cpu,
		"-smp", strconv.Itoa(spec.CPUs), "-m", strconv.Itoa(spec.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-chardev", "file,id=console,path=" + escapeOpt(st.ConsoleLog),
		"-serial", "chardev:console",
		"-qmp", "unix:" + escapeOpt(st.QMP) + ",server=on,wait=off",
		"-pidfile", filepath.Join(st.Dir, "qemu.pid"),
		"-daemonize",
	}
	for i, ov := range st.Overlays {
		a = append(a, "-drive", fmt.Sprintf("file=%s,format=qcow2,if=virtio,index=%d,discard=unmap", escapeOpt(ov), i))
	}
	if st.AgentSock != "" {
		a = append(a,
			"-chardev", "socket,id=agent,server=on,wait=off,path="+escapeOpt(st.AgentSock),
			"-device", "virtio-serial-pci,id=agentbus",
			"-device", "virtserialport,bus=agentbus.0,chardev=agent,name=org.qemu.guest_agent.0")
	}
	if st.OVMFVars != "" {
		a = append(a,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+escapeOpt(or(t.OVMFCode, DefaultOVMFCode)),
			"-drive", "if=pflash,format=raw,unit=1,file="+escapeOpt(st.OVMFVars))
	}
	if st.Tap != "" {
		// script=no: the tap exists and is on the bridge already
		// (createTap), and Terminate removes it.
		return append(a, "-netdev", "tap,id=net0,script=no,downscript=no,ifname="+st.Tap,
			"-device", "virtio-net-pci,netdev=net0,mac="+st.MAC)
	}
	net := "user,id=net0"
	for _, f := range st.Forwards {
		net += fmt.Sprintf(",hostfwd=tcp:%s:%d-:%d", fwdAddr, f.HostPort, f.GuestPort)
	}
	return append(a, "-netdev", net, "-device", "virtio-net-pci,netdev=net0")
}

// Status implements [launch.Target].
func (t *Target) Status(ctx context.Context, id string) (*launch.Instance, error) {
	st, err := t.readState(id)
	if err != nil {
		return nil, err
	}
	s := launch.Stopped
	if alive(st) {
		s = launch.Running
	}
	return st.instance(s), nil
}

// List returns every instance this target has state for, running or not.
func (t *Target) List(ctx context.Context) ([]*launch.Instance, error) {
	ids, err := t.states().IDs()
	if err != nil {
		return nil, err
	}
	var out []*launch.Instance
	for _, id := range ids {
		inst, err := t.Status(ctx, id)
		if err != nil {
			continue
		}
		out = append(out, inst)
	}
	return out, nil
}

// Terminate implements [launch.Target]: an ACPI power button press over
// QMP, up to ShutdownTimeout for the guest to power off, then QMP quit,
// then SIGKILL; then the instance's files are removed.
func (t *Target) Terminate(ctx context.Context, id string) error {
	st, err := t.readState(id)
	if errors.Is(err, launch.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.PID == 0 {
		// Recorded before QEMU started, by a server that did not live
		// to record the PID: QEMU's pidfile has it if it started.
		if pid, err := readPID(filepath.Join(st.Dir, "qemu.pid")); err == nil {
			st.PID = pid
		}
	}
	start := time.Now()
	how := "gone"
	if st.PID == 0 {
		// No pidfile yet: a QEMU may still be starting, its server
		// killed in the middle of -daemonize. It is found by its QMP
		// socket, unique to the instance, before its files go.
		if pids := processesOf(st); len(pids) > 0 {
			how = "kill (still starting)"
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			if !waitGone(ctx, st, 5*time.Second) {
				return fmt.Errorf("qemu: terminate %s: processes %v survived SIGKILL", id, pids)
			}
		}
	}
	if alive(st) {
		how = "powerdown"
		// A state without a start time is one whose launch never
		// finished (its server died in it): no guest to shut down
		// gracefully, and the restarted server should not wait for one.
		if st.StartedAt.IsZero() || qmpExec(ctx, st.QMP, "system_powerdown") != nil || !waitExit(ctx, st, or(t.ShutdownTimeout, DefaultShutdownTimeout)) {
			how = "quit"
			if qmpExec(ctx, st.QMP, "quit") != nil || !waitExit(ctx, st, 5*time.Second) {
				how = "kill"
				syscall.Kill(st.PID, syscall.SIGKILL)
				if !waitExit(ctx, st, 5*time.Second) {
					return fmt.Errorf("qemu: terminate %s: process %d survived SIGKILL", id, st.PID)
				}
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qemu: terminate %s: %w", id, err)
	}
	if st.Tap != "" {
		if err := deleteTap(st.Tap); err != nil {
			return fmt.Errorf("qemu: terminate %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(st.Dir); err != nil {
		return fmt.Errorf("qemu: terminate %s: remove files: %w", id, err)
	}
	if err := t.states().Remove(id); err != nil {
		return fmt.Errorf("qemu: terminate %s: %w", id, err)
	}
	t.logger().Info("qemu: terminated", "id", id, "how", how, "took", time.Since(start))
	return nil
}

// cleanup undoes a failed launch.
func (t *Target) cleanup(st *state) {
	if st.PID != 0 && alive(st) {
		syscall.Kill(st.PID, syscall.SIGKILL)
		waitExit(context.Background(), st, 5*time.Second)
	}
	if st.Tap != "" {
		deleteTap(st.Tap)
	}
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
		Target:     "qemu",
		Name:       st.Name,
		State:      s,
		PID:        st.PID,
		Accel:      st.Accel,
		ConsoleLog: st.ConsoleLog,
		Forwards:   append([]launch.Forward(nil), st.Forwards...),
		Addresses:  append([]string(nil), st.Addresses...),
		Overlays:   append([]string(nil), st.Overlays...),
		Tap:        st.Tap,
		StartedAt:  st.StartedAt,
	}
}

// AgentSocket returns the host end of the instance's guest agent channel,
// or an error wrapping launch.ErrNotSupported when it has none
// (Target.GuestAgent was off when it launched).
func (t *Target) AgentSocket(id string) (string, error) {
	st, err := t.readState(id)
	if err != nil {
		return "", err
	}
	if st.AgentSock == "" {
		return "", fmt.Errorf("qemu: instance %s: %w: launched without a guest agent channel", id, launch.ErrNotSupported)
	}
	return st.AgentSock, nil
}

// AgentChannel names instance id's guest agent channel: its socket.
func (t *Target) AgentChannel(id string) (string, error) { return t.AgentSocket(id) }

// OpenAgent connects to instance id's guest agent on its socket,
// retrying until the agent answers or ctx ends.
func (t *Target) OpenAgent(ctx context.Context, id string) (guestagent.Agent, error) {
	sock, err := t.AgentSocket(id)
	if err != nil {
		return nil, err
	}
	return guestagent.Open(ctx, sock)
}

// alive reports whether st's QEMU process runs: the pid exists, is not a
// zombie, and its command line names the instance's QMP socket (so a
// reused pid is not mistaken for it).
func alive(st *state) bool {
	if st.PID <= 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", st.PID))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.PID))
	if err != nil {
		return false
	}
	return bytes.Contains(cmdline, []byte(escapeOpt(st.QMP)))
}

// processesOf returns the live processes whose command line names st's
// QMP socket: the instance's QEMU, and its parent while -daemonize has
// not returned.
func processesOf(st *state) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if alive(&state{PID: pid, QMP: st.QMP}) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitGone polls until no process names st's QMP socket, for at most d.
func waitGone(ctx context.Context, st *state, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for len(processesOf(st)) > 0 {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// waitExit polls until st's process is gone, for at most d.
func waitExit(ctx context.Context, st *state, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for alive(st) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// memAvailableMiB reads MemAvailable from /proc/meminfo.
func memAvailableMiB() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, errors.New("no MemAvailable in /proc/meminfo")
}
