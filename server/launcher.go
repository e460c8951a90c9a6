package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/export"
	"github.com/ferrymigrate/ferry/guestagent"
	"github.com/ferrymigrate/ferry/jobs"
	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/launch/vmdir"
	"github.com/ferrymigrate/ferry/libguestfs"
	"github.com/ferrymigrate/ferry/libvirt"
	"github.com/ferrymigrate/ferry/nbd"
	"github.com/ferrymigrate/ferry/postlaunch"
	"github.com/ferrymigrate/ferry/qemu"
	"github.com/ferrymigrate/ferry/replica"
)

// launcher is the jobs.Launcher of `ferry server`: it serves the chosen
// snapshots over NBD on a local socket and launches instances on the
// server's launch target (LaunchSettings.Target, "qemu" by default): the
// qemu target boots them from copy-on-write overlays over those exports, so
// a launch copies nothing and replication never pauses; the export target
// writes image files and a manifest.
type launcher struct {
	replica *replica.Store
	targets map[string]launch.Target // by name; read-only after start
	// missing says why a known target is not in targets (libvirt without
	// a reachable libvirtd), by name; read-only after start.
	missing map[string]string
	// converter converts guests on launches with conversion on.
	converter *libguestfs.Converter
	sock      string
	log       *slog.Logger

	mu      sync.Mutex
	readers map[string]*replica.Reader // export name → open snapshot reader; guarded by mu
	// refs counts, per export name, the launches and instances of this
	// process that use it; at zero its reader is closed. Guarded by mu.
	refs map[string]int
	// uses lists the export names each instance of this process uses, by
	// instance id, for Terminate to release. Guarded by mu.
	uses map[string][]string
}

// exportName names a snapshot of a disk as an NBD export.
func exportName(diskID, snapshot string) string { return diskID + "@" + snapshot }

// lookup opens (once) the snapshot reader an export name refers to.
func (l *launcher) lookup(name string) (nbd.Device, error) {
	diskID, snap, ok := strings.Cut(name, "@")
	if !ok || diskID == "" || snap == "" {
		return nil, fmt.Errorf("export %q: want DISK@SNAPSHOT: %w", name, nbd.ErrUnknownExport)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.readers[name]; ok {
		return nbd.WithExtents(r, r.Extents), nil
	}
	d, err := l.replica.Disk(diskID)
	if err != nil {
		return nil, fmt.Errorf("export %q: %v: %w", name, err, nbd.ErrUnknownExport)
	}
	r, err := d.OpenSnapshot(context.Background(), snap)
	if err != nil {
		return nil, fmt.Errorf("export %q: %v: %w", name, err, nbd.ErrUnknownExport)
	}
	if l.readers == nil {
		l.readers = map[string]*replica.Reader{}
	}
	l.readers[name] = r
	return nbd.WithExtents(r, r.Extents), nil
}

// acquire opens the exports of a launch and holds them until release.
func (l *launcher) acquire(names []string) error {
	for i, n := range names {
		if _, err := l.lookup(n); err != nil {
			l.release(names[:i])
			return err
		}
		l.mu.Lock()
		if l.refs == nil {
			l.refs = map[string]int{}
		}
		l.refs[n]++
		l.mu.Unlock()
	}
	return nil
}

// release drops a launch's or an instance's hold on its exports and closes
// the snapshot readers nothing holds any more. A reader opened by an NBD
// client alone (an instance of an earlier process reconnecting) is kept
// until the server stops.
func (l *launcher) release(names []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range names {
		if l.refs[n] == 0 {
			continue
		}
		l.refs[n]--
		if l.refs[n] == 0 {
			delete(l.refs, n)
			if r, ok := l.readers[n]; ok {
				r.Close()
				delete(l.readers, n)
			}
		}
	}
}

// openReaders says how many snapshot readers are open, for tests.
func (l *launcher) openReaders() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.readers)
}

// guestPorts lists the guest ports the server's post-launch actions check,
// so each gets a host forward.
func guestPorts(acts []ferry.PostLaunchAction) []int {
	seen := map[int]bool{}
	var ports []int
	for _, a := range acts {
		if p, err := strconv.Atoi(a.Parameters["guest_port"]); err == nil && p > 0 && p < 65536 && !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	return ports
}

// size picks CPUs and memory: from the source's facts when right-sizing is
// BASIC, else from the launch settings.
func size(srv *ferry.SourceServer) (cpus, memMiB int) {
	ls := srv.LaunchSetup
	cpus, memMiB = ls.CPUs, ls.MemoryMiB
	if ls.RightSizing == ferry.RightSizingBasic {
		if srv.CPUs > 0 {
			cpus = min(srv.CPUs, 16)
		}
		if srv.RAMBytes > 0 {
			memMiB = int(min(srv.RAMBytes>>20, 16<<10))
		}
	}
	return max(cpus, 1), max(memMiB, 128)
}

// defaultTarget is the target of a server whose settings name none.
const defaultTarget = "qemu"

// target returns the launch target named name ("" is the default).
func (l *launcher) target(name string) (launch.Target, error) {
	if name == "" {
		name = defaultTarget
	}
	if tg, ok := l.targets[name]; ok {
		return tg, nil
	}
	if why, ok := l.missing[name]; ok {
		return nil, fmt.Errorf("launch target %q is not available on this server: %s", name, why)
	}
	have := make([]string, 0, len(l.targets))
	for n := range l.targets {
		have = append(have, n)
	}
	sort.Strings(have)
	return nil, fmt.Errorf("unknown launch target %q: this server has %s (set the server's launch settings target)", name, strings.Join(have, ", "))
}

// openExport resolves an NBD URL of the launch socket to the snapshot it
// serves, for targets that read snapshots directly (export).
func (l *launcher) openExport(ctx context.Context, nbdURL string) (nbd.Device, error) {
	u, err := url.Parse(nbdURL)
	if err != nil || u.Scheme != "nbd+unix" || u.Query().Get("socket") != l.sock {
		return nil, fmt.Errorf("%q is not an export of this server's launch socket", nbdURL)
	}
	return l.lookup(strings.TrimPrefix(u.Path, "/"))
}

// instanceName is the name of srv's instances launched by kind: short,
// since the target's unix sockets live under the instance directory and
// socket paths are limited to 107 bytes.
func instanceName(srv *ferry.SourceServer, kind ferry.JobInitiator) string {
	what := "test"
	if kind == ferry.InitiatedByStartCutover {
		what = "cutover"
	}
	short := strings.TrimPrefix(srv.ID, "s-")
	return what + "-" + short[:min(8, len(short))]
}

// InstanceID implements jobs.Launcher.
func (l *launcher) InstanceID(srv *ferry.SourceServer, kind ferry.JobInitiator) string {
	return vmdir.NewID(instanceName(srv, kind))
}

// Launch implements jobs.Launcher.
func (l *launcher) Launch(ctx context.Context, srv *ferry.SourceServer, snaps map[string]string, kind ferry.JobInitiator, jobID, id string, logf jobs.LogFunc) (*ferry.LaunchedInstance, error) {
	tg, err := l.target(srv.LaunchSetup.Target)
	if err != nil {
		return nil, err
	}
	_, files := tg.(*export.Target)
	spec := launch.Spec{Name: instanceName(srv, kind), ID: id, Source: launch.Source{
		ServerID: srv.ID, Hostname: srv.Hostname, OS: srv.OS, Kernel: srv.Kernel, CPUs: srv.CPUs, RAMBytes: srv.RAMBytes,
	}}
	spec.CPUs, spec.MemoryMiB = size(srv)
	if srv.LaunchSetup.BootMode == ferry.BootUEFI {
		spec.BootMode = launch.UEFI
	}
	net := srv.LaunchSetup.Network
	if net.Mode == ferry.NetworkBridge {
		spec.Network = launch.Network{Mode: launch.NetBridge, Bridge: net.Bridge}
	} else if !files { // exported images do not run here: nothing to forward to
		spec.Forwards = forwards(net.Forwards, guestPorts(srv.LaunchSetup.PostLaunchActions))
	}
	var names []string
	for _, d := range srv.Disks {
		snap, ok := snaps[d.Name]
		if !ok {
			return nil, fmt.Errorf("no snapshot for disk %s", d.Name)
		}
		name := exportName(dataplane.DiskID(srv.ID, d.Name), snap)
		names = append(names, name)
		u := url.URL{Scheme: "nbd+unix", Path: "/" + name, RawQuery: "socket=" + l.sock}
		spec.Disks = append(spec.Disks, launch.DiskSource{NBDURL: u.String(), Name: d.Name, Snapshot: snap})
	}
	if err := l.acquire(names); err != nil {
		return nil, err
	}
	if srv.LaunchSetup.Convert {
		spec.Prepare = l.convert(logf)
	}
	inst, err := tg.Launch(ctx, spec)
	if err != nil {
		l.release(names)
		return nil, err
	}
	l.mu.Lock()
	if l.uses == nil {
		l.uses = map[string][]string{}
	}
	l.uses[inst.ID] = names
	l.mu.Unlock()
	li := &ferry.LaunchedInstance{
		ID: inst.ID, JobID: jobID, Kind: kind, Target: inst.Target, FirstBoot: ferry.FirstBootWaiting,
		Snapshots: snaps, ConsoleLog: inst.ConsoleLog, Addresses: inst.Addresses, LaunchedAt: inst.StartedAt.UTC(),
	}
	for _, f := range inst.Forwards {
		li.Forwards = append(li.Forwards, ferry.PortForward{HostPort: f.HostPort, GuestPort: f.GuestPort})
	}
	l.log.Info("instance launched", "server", srv.ID, "instance", inst.ID, "kind", kind, "accel", inst.Accel)
	return li, nil
}

// forwards are the port forwards of a user-mode launch: the launch
// settings' own, then one (host port picked) for each guest port a
// post-launch check needs that they do not forward already.
func forwards(set []ferry.PortForward, checks []int) []launch.Forward {
	var out []launch.Forward
	have := map[int]bool{}
	for _, f := range set {
		out = append(out, launch.Forward{GuestPort: f.GuestPort, HostPort: f.HostPort})
		have[f.GuestPort] = true
	}
	for _, p := range checks {
		if !have[p] {
			out = append(out, launch.Forward{GuestPort: p})
		}
	}
	return out
}

// convert returns the Prepare step of a launch with conversion: libguestfs
// on the instance's own disks, each change a line of the job log.
func (l *launcher) convert(logf jobs.LogFunc) launch.PrepareFunc {
	return func(ctx context.Context, disks, formats []string) error {
		if err := l.converter.Available(); err != nil {
			logf(ferry.EventConversionFail, "conversion is on but cannot run: %v (install libguestfs-tools, or turn conversion off in the launch settings)", err)
			return err
		}
		logf(ferry.EventConversionStart, "converting the guest with libguestfs on the instance's own disks (%d)", len(disks))
		start := time.Now()
		changes, err := l.converter.Convert(ctx, disks, formats, libguestfs.Options{})
		applied := 0
		for _, ch := range changes {
			if ch.Applied {
				applied++
			}
			logf(ferry.EventConversionEnd, "%s", ch)
		}
		if err != nil {
			logf(ferry.EventConversionFail, "conversion failed after %v: %v", time.Since(start).Round(time.Second), err)
			return fmt.Errorf("conversion: %w", err)
		}
		logf(ferry.EventConversionEnd, "conversion done in %v: %d change(s), %d step(s) with nothing to do", time.Since(start).Round(time.Second), applied, len(changes)-applied)
		return nil
	}
}

// hostAddr finds where a guest port is forwarded on the host.
func hostAddr(inst *ferry.LaunchedInstance, guest string) (string, error) {
	p, err := strconv.Atoi(guest)
	if err != nil {
		return "", fmt.Errorf("guest_port %q is not a port", guest)
	}
	for _, f := range inst.Forwards {
		if f.GuestPort == p {
			return net.JoinHostPort("127.0.0.1", strconv.Itoa(f.HostPort)), nil
		}
	}
	return "", fmt.Errorf("guest port %d is not forwarded (checks by port need network mode user; a bridged guest is reached at its own address)", p)
}

// agentTarget is a target whose instances have a QEMU guest agent
// channel (qemu and libvirt, with GuestAgent on).
type agentTarget interface {
	// OpenAgent connects to instance id's guest agent; via names the
	// channel.
	OpenAgent(ctx context.Context, id string) (guestagent.Agent, error)
	AgentChannel(id string) (via string, err error)
}

// PostLaunch implements jobs.Launcher. An action's parameters say what it
// checks: type=boot_marker with pattern (a regular expression on the serial
// console); type=tcp with guest_port; type=http with guest_port, path,
// status and contains; type=script with script (run with /bin/sh -c in the
// guest through the QEMU guest agent, which the guest must run; success
// is exit code 0, and the output keeps the exit code, stdout and stderr).
func (l *launcher) PostLaunch(ctx context.Context, inst *ferry.LaunchedInstance, a ferry.PostLaunchAction) ferry.PostLaunchResult {
	res := ferry.PostLaunchResult{ActionID: a.ID, Name: a.Name, StartedAt: time.Now().UTC()}
	if tg, err := l.target(inst.Target); err == nil {
		if _, files := tg.(*export.Target); files {
			res.Status, res.FinishedAt = ferry.PostLaunchSuccess, time.Now().UTC()
			res.Output = "skipped: the export target writes image files; nothing runs here to check"
			return res
		}
	}
	var r postlaunch.Result
	p := a.Parameters
	switch p["type"] {
	case "boot_marker":
		re, err := regexp.Compile(p["pattern"])
		if err != nil || p["pattern"] == "" {
			r = postlaunch.Result{Status: postlaunch.Failed, Output: fmt.Sprintf("pattern %q: %v", p["pattern"], err)}
			break
		}
		r = postlaunch.WaitConsole(ctx, inst.ConsoleLog, re)
	case "tcp":
		addr, err := hostAddr(inst, p["guest_port"])
		if err != nil {
			r = postlaunch.Result{Status: postlaunch.Failed, Output: err.Error()}
			break
		}
		r = postlaunch.TCPOpen(ctx, addr)
	case "http":
		addr, err := hostAddr(inst, p["guest_port"])
		if err != nil {
			r = postlaunch.Result{Status: postlaunch.Failed, Output: err.Error()}
			break
		}
		status := http.StatusOK
		if s := p["status"]; s != "" {
			if status, err = strconv.Atoi(s); err != nil {
				r = postlaunch.Result{Status: postlaunch.Failed, Output: fmt.Sprintf("status %q is not a number", s)}
				break
			}
		}
		r = postlaunch.HTTPCheck(ctx, "http://"+addr+p["path"], status, p["contains"])
	case "script":
		at, err := l.agentTarget(inst)
		if err != nil {
			r = postlaunch.Result{Status: postlaunch.Failed, Output: err.Error()}
			break
		}
		via, err := at.AgentChannel(inst.ID)
		if err != nil {
			r = postlaunch.Result{Status: postlaunch.Failed, Output: err.Error()}
			break
		}
		if p["script"] == "" {
			r = postlaunch.Result{Status: postlaunch.Failed, Output: "parameter script is empty"}
			break
		}
		r = postlaunch.RunScript(ctx, via, func(ctx context.Context) (guestagent.Agent, error) { return at.OpenAgent(ctx, inst.ID) }, p["script"])
	default:
		r = postlaunch.Result{Status: postlaunch.Failed, Output: fmt.Sprintf("unknown action type %q (boot_marker, tcp, http or script)", p["type"])}
	}
	res.Output = r.Output
	res.Status = ferry.PostLaunchFailed
	if r.Status == postlaunch.Success {
		res.Status = ferry.PostLaunchSuccess
	}
	res.FinishedAt = time.Now().UTC()
	return res
}

// agentTarget finds the target of inst if it has guest agent channels.
func (l *launcher) agentTarget(inst *ferry.LaunchedInstance) (agentTarget, error) {
	tg, err := l.target(inst.Target)
	if err != nil {
		return nil, err
	}
	at, ok := tg.(agentTarget)
	if !ok {
		return nil, fmt.Errorf("launch target %s cannot run scripts in the guest (no guest agent channel)", tg.Name())
	}
	return at, nil
}

// Terminate implements jobs.Launcher.
func (l *launcher) Terminate(ctx context.Context, inst *ferry.LaunchedInstance) error {
	tg, err := l.target(inst.Target)
	if err != nil {
		return fmt.Errorf("terminate %s: %w", inst.ID, err)
	}
	if err := tg.Terminate(ctx, inst.ID); err != nil && !errors.Is(err, launch.ErrNotFound) {
		return err
	}
	l.mu.Lock()
	names := l.uses[inst.ID]
	delete(l.uses, inst.ID)
	l.mu.Unlock()
	l.release(names)
	return nil
}

// close releases every open reader.
func (l *launcher) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for n, r := range l.readers {
		r.Close()
		delete(l.readers, n)
	}
}

// newLauncher returns a launcher with the qemu target (instances in
// DATA/instances), the export target (images in DATA/exports) and, when
// libvirtd answers at start, the libvirt target (DATA/libvirt).
func newLauncher(ctx context.Context, rs *replica.Store, dataDir, sock, qemuBinary string, log *slog.Logger) *launcher {
	l := &launcher{replica: rs, sock: sock, log: log, converter: &libguestfs.Converter{Logger: log}}
	q := qemu.New(filepath.Join(dataDir, "instances"))
	q.Logger, q.GuestAgent, q.Binary = log, true, qemuBinary
	e := export.New(filepath.Join(dataDir, "exports"), l.openExport)
	e.Logger = log
	l.targets = map[string]launch.Target{q.Name(): q, e.Name(): e}
	l.missing = map[string]string{}
	lv := libvirt.New(filepath.Join(dataDir, "libvirt"))
	lv.Logger, lv.GuestAgent = log, true
	if v, err := lv.Available(ctx); err != nil {
		l.missing[lv.Name()] = fmt.Sprintf("%v (checked when the server started; restart it once libvirtd runs)", err)
		log.Info("launch target libvirt not available", "reason", err)
	} else {
		l.targets[lv.Name()] = lv
		log.Info("launch target libvirt available", "version", v)
	}
	return l
}

// startLaunches sets up test launches and cutovers: the NBD socket that
// serves snapshots, the QEMU launch target, and the job runner; jobs a
// previous process left unfinished are ended with the reason.
func (s *Server) startLaunches(ctx context.Context, cfg config.Server, log *slog.Logger) error {
	run := filepath.Join(cfg.DataDir, "run")
	if err := os.MkdirAll(run, 0o700); err != nil {
		return fmt.Errorf("create run directory: %w", err)
	}
	sock := filepath.Join(run, "nbd.sock")
	_ = os.Remove(sock) // a stale socket of a previous process
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen for launch NBD exports on %s: %w", sock, err)
	}
	s.nbdLn = ln
	s.launcher = newLauncher(ctx, s.replica, cfg.DataDir, sock, cfg.QEMUBinary, log)
	s.jobs = &jobs.Runner{Store: s.notified, Snapshots: s.data, Launcher: s.launcher, Logger: log}
	n, err := s.jobs.Recover(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		log.Warn("ended jobs left unfinished by a previous run", "jobs", n)
	}
	return nil
}

// serveExports serves launch snapshots over NBD until ctx ends.
func (s *Server) serveExports(ctx context.Context) error {
	srv := &nbd.Server{Lookup: s.launcher.lookup, Logger: s.log}
	return srv.Serve(ctx, s.nbdLn)
}
