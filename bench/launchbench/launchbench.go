package launchbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/bench/harness"
	"github.com/ferrymigrate/ferry/internal/testimage"
	"github.com/ferrymigrate/ferry/libguestfs"
	"github.com/ferrymigrate/ferry/qemu"
)

// Goals of the launch figures.
const (
	// TestGoal bounds a test launch's overhead: command to the guest's
	// first console line, minus QEMU alone to its first console line.
	TestGoal = 10 * time.Second
	// CutoverGoal bounds a cutover: command to the instance running.
	CutoverGoal = 60 * time.Second
)

// ErrUnavailable is wrapped by Run's error when the benchmark cannot run
// on this machine: not root, QEMU or a tool the test image needs missing.
var ErrUnavailable = errors.New("the launch benchmark cannot run here")

// Options configure a run.
type Options struct {
	// Binary is the ferry executable that runs the server, the agent and
	// the CLI commands. Required.
	Binary string
	// Dir holds the run's files (the source image, the server's data, the
	// agent's state); "" means the system temporary directory. The run
	// works in a new directory inside it and removes it.
	Dir string
	// Logf receives progress and each job's log; nil discards it.
	Logf func(format string, args ...any)
}

// TestLaunch is one `ferry launch test`.
type TestLaunch struct {
	// Convert says whether conversion (libguestfs) was on.
	Convert bool `json:"convert"`
	// RunningSeconds is the command to the server reporting the instance
	// launched; FirstLineSeconds the command to the guest's first console
	// line.
	RunningSeconds   float64 `json:"running_s"`
	FirstLineSeconds float64 `json:"first_line_s"`
	// OverheadSeconds is FirstLineSeconds minus QEMU alone's first line:
	// what the launch adds to the boot.
	OverheadSeconds float64 `json:"overhead_s"`
	// SnapshotSeconds and ConversionSeconds are those steps of the job, from
	// its log (0: not in the log).
	SnapshotSeconds   float64 `json:"snapshot_s"`
	ConversionSeconds float64 `json:"conversion_s,omitempty"`
}

// Result is a run's figures.
type Result struct {
	// Accel is the accelerator QEMU ran with ("kvm" or "tcg").
	Accel string `json:"accel"`
	// QEMUAloneSeconds is QEMU alone booting the test image from a local
	// file (a qcow2 overlay of it) to its first console line.
	QEMUAloneSeconds float64 `json:"qemu_alone_first_line_s"`
	// Tests are the test launches: conversion off, then on when libguestfs
	// is installed.
	Tests []TestLaunch `json:"tests"`
	// ConvertSkipped says why there is no test launch with conversion on
	// ("" when there is one).
	ConvertSkipped string `json:"convert_skipped,omitempty"`
	// CutoverSeconds is `ferry launch cutover` to the instance running,
	// guest boot excluded; CutoverSnapshotSeconds its drained final sync
	// and snapshot, from the job log.
	CutoverSeconds         float64 `json:"cutover_s"`
	CutoverSnapshotSeconds float64 `json:"cutover_snapshot_s"`
	// TerminateSeconds is `ferry launch terminate` of the test instance
	// (conversion off, booted to its boot marker) to the command's return.
	TerminateSeconds float64 `json:"terminate_s"`
}

// Check reports whether the benchmark can run here: root (loop devices),
// QEMU, qemu-img and losetup. Its errors wrap ErrUnavailable.
func Check() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root (loop devices)", ErrUnavailable)
	}
	for _, b := range []string{qemu.DefaultBinary, qemu.DefaultImgBinary, "losetup"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("%w: %s is not installed (scripts/setup.sh installs qemu-system-x86 and qemu-utils)", ErrUnavailable, b)
		}
	}
	return nil
}

// Run builds the test image (or takes it from its cache), measures QEMU
// alone, then starts the server and the agent, waits for the initial sync
// and measures the test launches, the terminate and the cutover. Errors
// wrap ErrUnavailable when the machine lacks what the run needs.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Binary == "" {
		return nil, errors.New("launch bench: the ferry binary is required")
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if err := Check(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(o.Binary); err != nil {
		return nil, fmt.Errorf("launch bench: ferry binary: %w", err)
	}
	bctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	img, err := testimage.Build(bctx, testimage.Options{})
	cancel()
	if errors.Is(err, testimage.ErrMissingTool) {
		return nil, fmt.Errorf("%w: test image: %v", ErrUnavailable, err)
	}
	if err != nil {
		return nil, fmt.Errorf("launch bench: build the test image: %w", err)
	}
	if o.Dir != "" {
		if err := os.MkdirAll(o.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("launch bench: %w", err)
		}
	}
	// Short names: the instances' unix sockets live under it, and a socket
	// path must be under 108 bytes.
	work, err := os.MkdirTemp(o.Dir, "launch")
	if err != nil {
		return nil, fmt.Errorf("launch bench: work directory: %w", err)
	}
	defer os.RemoveAll(work)
	o.Logf("launch: test image %s (%d MiB, kernel %s)", img.Path, img.Size>>20, img.KernelVersion)

	res := &Result{}
	// Baseline: QEMU alone, the same image from a local file.
	alone, accel, err := qemuAloneFirstLine(ctx, img.Path, filepath.Join(work, "alone"))
	if err != nil {
		return nil, err
	}
	res.QEMUAloneSeconds, res.Accel = alone.Seconds(), accel
	o.Logf("launch: QEMU alone (%s), local file: first console line after %.2fs", accel, alone.Seconds())

	// The source: a copy of the image on a loop device.
	src := filepath.Join(work, "source.img")
	if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", img.Path, src).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("launch bench: copy the test image: %w: %s", err, bytes.TrimSpace(out))
	}
	out, err := exec.CommandContext(ctx, "losetup", "--find", "--show", src).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("launch bench: losetup: %w: %s", err, bytes.TrimSpace(out))
	}
	dev := string(bytes.TrimSpace(out))
	defer func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			o.Logf("launch: detach %s: %v: %s", dev, err, bytes.TrimSpace(out))
		}
	}()

	srv, err := harness.StartServer(ctx, o.Binary, filepath.Join(work, "s"))
	if err != nil {
		return nil, fmt.Errorf("launch bench: %w", err)
	}
	defer srv.Stop()
	// Instances outlive the server (QEMU runs daemonized): whatever a
	// launch left running is stopped and removed through the state files
	// the server's qemu target keeps, before the server stops.
	defer terminateInstances(filepath.Join(srv.DataDir, "instances"), o.Logf)
	admin, err := srv.Client(srv.Token)
	if err != nil {
		return nil, fmt.Errorf("launch bench: %w", err)
	}
	defer admin.CloseIdleConnections()
	it, err := admin.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{Name: "launch-bench", ExpiresInSeconds: 600})
	if err != nil {
		return nil, fmt.Errorf("launch bench: install token: %w", err)
	}
	agent, err := startProc(o.Binary, []string{"agent", "--server", srv.APIURL, "--install-token", it.Secret, "--ca-fingerprint", srv.Fingerprint,
		"--state-dir", filepath.Join(work, "agent"), "--disk", dev, "--machine-id", "launch-bench"}, filepath.Join(work, "agent.log"))
	if err != nil {
		return nil, fmt.Errorf("launch bench: %w", err)
	}
	defer agent.stop()

	b := &bench{o: o, admin: admin, srv: srv, env: []string{"FERRY_CONFIG=" + filepath.Join(work, "cli.json"),
		"FERRY_ADDR=" + srv.APIURL, "FERRY_TOKEN=" + srv.Token, "FERRY_CA_FINGERPRINT=" + srv.Fingerprint}}
	o.Logf("launch: initial sync of %s by a `ferry agent` process", dev)
	start := time.Now()
	s, err := b.waitFirstServer(ctx, 5*time.Minute, func(s *ferry.SourceServer) bool {
		return s.Lifecycle == ferry.LifecycleReadyForTest && s.Replication.State == ferry.ReplicationContinuous
	})
	if err != nil {
		return nil, fmt.Errorf("launch bench: initial sync: %w%s", err, agent.tail())
	}
	b.id, b.launch = s.ID, s.LaunchSetup
	o.Logf("launch: READY_FOR_TEST and CONTINUOUS after %.1fs", time.Since(start).Seconds())

	converts := []bool{false}
	if err := (&libguestfs.Converter{}).Available(); err != nil {
		res.ConvertSkipped = err.Error()
		o.Logf("launch: no test launch with conversion on: %v", err)
	} else {
		converts = append(converts, true)
	}
	for _, convert := range converts {
		t, term, err := b.testLaunch(ctx, convert, alone)
		if err != nil {
			return nil, fmt.Errorf("launch bench: test launch, conversion %v: %w", onOff(convert), err)
		}
		res.Tests = append(res.Tests, t)
		if !convert {
			res.TerminateSeconds = term.Seconds()
		}
	}
	if res.CutoverSeconds, res.CutoverSnapshotSeconds, err = b.cutover(ctx); err != nil {
		return nil, fmt.Errorf("launch bench: cutover: %w", err)
	}
	return res, nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// bench is a run's server, its one source server and the CLI's
// environment.
type bench struct {
	o      Options
	admin  *api.Client
	srv    *harness.ServerProcess
	env    []string
	id     string
	launch ferry.LaunchSettings
}

// setLaunch sets the source server's launch settings: a small instance,
// no right-sizing, no post-launch actions, conversion on or off.
func (b *bench) setLaunch(ctx context.Context, convert bool) error {
	ls := b.launch
	ls.RightSizing, ls.CPUs, ls.MemoryMiB, ls.Convert, ls.PostLaunchActions = ferry.RightSizingNone, 1, 256, convert, nil
	if err := b.admin.Do(ctx, "PATCH", "/servers/"+url.PathEscape(b.id), nil, api.UpdateServerRequest{Launch: &ls}, nil); err != nil {
		return fmt.Errorf("launch settings: %w", err)
	}
	return nil
}

// ferry runs the ferry CLI with the bench's environment and returns its
// standard output.
func (b *bench) ferry(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, b.o.Binary, args...)
	cmd.Env = append(os.Environ(), b.env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("ferry %s: %w: %s", strings.Join(args, " "), err, tail(stderr.Bytes(), 2000))
	}
	return out, nil
}

// start runs `ferry launch KIND SERVER --wait=false` and returns the job
// id and the time the command started.
func (b *bench) start(ctx context.Context, kind string) (string, time.Time, error) {
	start := time.Now()
	out, err := b.ferry(ctx, "launch", kind, b.id, "--wait=false", "-o", "json")
	if err != nil {
		return "", start, err
	}
	var job ferry.Job
	if err := json.Unmarshal(out, &job); err != nil || job.ID == "" {
		return "", start, fmt.Errorf("ferry launch %s printed %q, want a job: %v", kind, tail(out, 500), err)
	}
	return job.ID, start, nil
}

// testLaunch test-launches the server, measures it against QEMU alone's
// first console line, waits for the guest's boot marker, then terminates
// the instance and returns the terminate's time too.
func (b *bench) testLaunch(ctx context.Context, convert bool, alone time.Duration) (TestLaunch, time.Duration, error) {
	t := TestLaunch{Convert: convert}
	if err := b.setLaunch(ctx, convert); err != nil {
		return t, 0, err
	}
	jobID, start, err := b.start(ctx, "test")
	if err != nil {
		return t, 0, err
	}
	inst, err := b.waitLaunched(ctx, jobID, start, true)
	if err != nil {
		return t, 0, err
	}
	running := time.Since(start)
	first, err := waitConsole(ctx, inst.ConsoleLog, start, 2*time.Minute, firstLine)
	if err != nil {
		return t, 0, err
	}
	jl, err := b.waitJob(ctx, jobID, 2*time.Minute)
	if err != nil {
		return t, 0, err
	}
	t.RunningSeconds, t.FirstLineSeconds, t.OverheadSeconds = running.Seconds(), first.Seconds(), (first - alone).Seconds()
	t.SnapshotSeconds = PhaseSeconds(jl.Log, ferry.EventSnapshotStart, ferry.EventSnapshotEnd)
	t.ConversionSeconds = PhaseSeconds(jl.Log, ferry.EventConversionStart, ferry.EventConversionEnd)
	b.o.Logf("launch: test launch, conversion %-3s: command → instance running %6.2fs, → first console line %6.2fs; QEMU alone %5.2fs; launch overhead %6.2fs (goal < %v)",
		onOff(convert), running.Seconds(), first.Seconds(), alone.Seconds(), t.OverheadSeconds, TestGoal)
	b.logJob(jl, start)

	// Terminate a booted guest, as an operator does after testing (one
	// still booting ignores the power button until Terminate's timeout).
	if _, err := waitConsole(ctx, inst.ConsoleLog, start, 3*time.Minute, bootMarker); err != nil {
		return t, 0, err
	}
	term := time.Now()
	if _, err := b.ferry(ctx, "launch", "terminate", b.id); err != nil {
		return t, 0, err
	}
	took := time.Since(term)
	if _, err := b.waitServer(ctx, 10*time.Second, func(s *ferry.SourceServer) bool {
		return s.Launched != nil && s.Launched.ID == inst.ID && !s.Launched.TerminatedAt.IsZero()
	}); err != nil {
		return t, 0, fmt.Errorf("after ferry launch terminate: %w", err)
	}
	b.o.Logf("launch: terminate (conversion %s): %.2fs", onOff(convert), took.Seconds())
	return t, took, nil
}

// cutover cuts the server over from a drained final sync (conversion off)
// and returns the command's time to the instance running and the job's
// drain and snapshot time. The instance is left running: the run's
// clean-up stops it.
func (b *bench) cutover(ctx context.Context) (running, snapshot float64, err error) {
	if err := b.setLaunch(ctx, false); err != nil {
		return 0, 0, err
	}
	if err := b.admin.Do(ctx, "POST", "/servers/"+url.PathEscape(b.id)+"/lifecycle", nil, api.ChangeLifecycleRequest{State: ferry.LifecycleReadyForCutover}, nil); err != nil {
		return 0, 0, fmt.Errorf("lifecycle READY_FOR_CUTOVER: %w", err)
	}
	jobID, start, err := b.start(ctx, "cutover")
	if err != nil {
		return 0, 0, err
	}
	if _, err := b.waitLaunched(ctx, jobID, start, false); err != nil {
		return 0, 0, err
	}
	took := time.Since(start)
	jl, err := b.waitJob(ctx, jobID, 2*time.Minute)
	if err != nil {
		return 0, 0, err
	}
	b.o.Logf("launch: cutover: command → instance running %6.2fs (guest boot excluded; goal < %v)", took.Seconds(), CutoverGoal)
	b.logJob(jl, start)
	return took.Seconds(), PhaseSeconds(jl.Log, ferry.EventSnapshotStart, ferry.EventSnapshotEnd), nil
}

// logJob logs a job's log with each line's time since start.
func (b *bench) logJob(jl *api.JobWithLog, start time.Time) {
	for _, l := range jl.Log {
		b.o.Logf("  %+7.2fs %-26s %.100s", l.Time.Sub(start).Seconds(), l.Event, l.Message)
	}
}

// PhaseSeconds is the time in a job log from the first from event to the
// last to event after it; 0 when either is missing.
func PhaseSeconds(log []ferry.JobLogItem, from, to ferry.JobEvent) float64 {
	var t0, t1 time.Time
	for _, l := range log {
		switch {
		case l.Event == from && t0.IsZero():
			t0 = l.Time
		case l.Event == to && !t0.IsZero():
			t1 = l.Time
		}
	}
	if t0.IsZero() || t1.IsZero() {
		return 0
	}
	return t1.Sub(t0).Seconds()
}

// waitFirstServer polls the server list every 250 ms until it holds one
// server for which cond holds.
func (b *bench) waitFirstServer(ctx context.Context, within time.Duration, cond func(*ferry.SourceServer) bool) (*ferry.SourceServer, error) {
	deadline := time.Now().Add(within)
	last := "no server yet"
	for {
		l, err := b.admin.ListServers(ctx, nil)
		if err == nil && len(l.Items) == 1 {
			s := &l.Items[0]
			last = fmt.Sprintf("%s/%s", s.Lifecycle, s.Replication.State)
			if cond(s) {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the server did not reach the wanted state within %v (last %s, error %v)", within, last, err)
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// waitServer polls the source server every 50 ms until cond holds.
func (b *bench) waitServer(ctx context.Context, within time.Duration, cond func(*ferry.SourceServer) bool) (*ferry.SourceServer, error) {
	deadline := time.Now().Add(within)
	for {
		s, err := b.admin.Server(ctx, b.id)
		if err == nil && cond(s) {
			return s, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("lifecycle %s", s.Lifecycle)
			}
			return nil, fmt.Errorf("the server did not reach the wanted state within %v: %w", within, err)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// waitLaunched polls the source server every 50 ms until it shows the
// instance of job jobID (with its console log when console is set), and
// the job every second, failing as soon as the job ended without one.
func (b *bench) waitLaunched(ctx context.Context, jobID string, start time.Time, console bool) (*ferry.LaunchedInstance, error) {
	deadline := start.Add(5 * time.Minute)
	lastJob := time.Now()
	for {
		s, err := b.admin.Server(ctx, b.id)
		if err == nil && s.Launched != nil && s.Launched.JobID == jobID && (!console || s.Launched.ConsoleLog != "") {
			return s.Launched, nil
		}
		if time.Since(lastJob) >= time.Second {
			lastJob = time.Now()
			var jl api.JobWithLog
			if b.admin.Do(ctx, "GET", "/jobs/"+url.PathEscape(jobID), nil, nil, &jl) == nil && jl.Status == ferry.JobCompleted {
				// One more look: the instance may have landed in between.
				if s, err := b.admin.Server(ctx, b.id); err == nil && s.Launched != nil && s.Launched.JobID == jobID {
					return s.Launched, nil
				}
				return nil, fmt.Errorf("job %s ended without an instance:\n%s", jobID, jobLog(&jl))
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("job %s launched no instance within %v (last error %v)", jobID, time.Since(start).Round(time.Second), err)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// waitJob waits for a job to end and checks that its one server launched
// (or, for a terminate, was terminated).
func (b *bench) waitJob(ctx context.Context, id string, within time.Duration) (*api.JobWithLog, error) {
	deadline := time.Now().Add(within)
	for {
		var jl api.JobWithLog
		err := b.admin.Do(ctx, "GET", "/jobs/"+url.PathEscape(id), nil, nil, &jl)
		if err == nil && jl.Status == ferry.JobCompleted {
			for _, s := range jl.Servers {
				if s.LaunchStatus == ferry.LaunchFailed {
					return nil, fmt.Errorf("job %s: the launch failed:\n%s", id, jobLog(&jl))
				}
			}
			return &jl, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("job %s did not end within %v (%v):\n%s", id, within, err, jobLog(&jl))
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

func jobLog(jl *api.JobWithLog) string {
	var b strings.Builder
	for _, l := range jl.Log {
		fmt.Fprintf(&b, "  %s %-24s %s\n", l.Time.Format("15:04:05.000"), l.Event, l.Message)
	}
	return b.String()
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// tail is the end of b, at most n bytes, trimmed.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}
