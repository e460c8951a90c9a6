package e2e

import (
	"bytes"
	"encoding/json"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/internal/testimage"
	"github.com/ferrymigrate/ferry/qemu"
)

// BenchmarkLaunch measures issue 3's launch figures with the real binary,
// agent and replica store on the test image:
//
//   - test launch: `ferry launch test` to the guest's first console line,
//     minus QEMU's own time to its first console line booting the same
//     image from a local file with the same machine options (goal < 10 s);
//     once with conversion off and once with it on (libguestfs);
//   - cutover: `ferry launch cutover` (final sync drained) to the instance
//     running, guest boot excluded (goal < 60 s).
//
// Run it with: go test -run '^$' -bench BenchmarkLaunch -benchtime 1x -v ./e2e
func BenchmarkLaunch(b *testing.B) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Skip("qemu-system-x86_64 is not installed")
	}
	if os.Geteuid() != 0 {
		b.Skip("loop devices need root")
	}
	img := testimage.ForTest(b)
	dir := b.TempDir()
	src := filepath.Join(dir, "source.img")
	if out, err := exec.Command("cp", "--sparse=always", img.Path, src).CombinedOutput(); err != nil {
		b.Fatalf("cp: %v %s", err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", src).CombinedOutput()
	if err != nil {
		b.Fatalf("losetup: %v %s", err, out)
	}
	dev := string(bytes.TrimSpace(out))
	defer exec.Command("losetup", "-d", dev).Run()

	for i := 0; i < b.N; i++ {
		benchLaunchOnce(b, img, dir, dev)
	}
}

func benchLaunchOnce(b *testing.B, img *testimage.Image, dir, dev string) {
	ctx := b.Context()
	// Baseline: QEMU alone, the same image from a local file.
	qemuFirst := qemuAloneFirstLine(b, img.Path, filepath.Join(dir, "alone"))

	s := startServer(b, filepath.Join(dir, "server"))
	admin, err := clientFor(s, s.token)
	if err != nil {
		b.Fatal(err)
	}
	it, err := admin.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{Name: "bench", ExpiresInSeconds: 600})
	if err != nil {
		b.Fatal(err)
	}
	agent := exec.Command(bin, "agent", "--server", s.addr, "--install-token", it.Secret, "--ca-fingerprint", s.fingerprint,
		"--state-dir", filepath.Join(dir, "agent"), "--disk", dev, "--machine-id", "launch-bench")
	if err := agent.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { agent.Process.Kill(); agent.Wait() }()
	srv := waitServer(b, admin, 3*time.Minute, func(s *ferry.SourceServer) bool {
		return s.Lifecycle == ferry.LifecycleReadyForTest && s.Replication.State == ferry.ReplicationContinuous
	})
	env := []string{"FERRY_CONFIG=" + filepath.Join(dir, "cli.json"), "FERRY_ADDR=" + s.addr, "FERRY_TOKEN=" + s.token, "FERRY_CA_FINGERPRINT=" + s.fingerprint}
	setLaunch := func(convert bool) {
		ls := srv.LaunchSetup
		ls.RightSizing, ls.CPUs, ls.MemoryMiB, ls.Convert, ls.PostLaunchActions = ferry.RightSizingNone, 1, 256, convert, nil
		if err := admin.Do(ctx, "PATCH", "/servers/"+url.PathEscape(srv.ID), nil, api.UpdateServerRequest{Launch: &ls}, nil); err != nil {
			b.Fatal(err)
		}
	}
	// launch runs `ferry launch KIND SERVER --wait=false` and returns the
	// job id and the time the command started.
	launch := func(kind string, args ...string) (string, time.Time) {
		start := time.Now()
		cmd := exec.Command(bin, append([]string{"launch", kind, srv.ID, "--wait=false", "-o", "json"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("ferry launch %s: %v", kind, err)
		}
		var job ferry.Job
		if err := json.Unmarshal(out, &job); err != nil {
			b.Fatalf("ferry launch %s output %q: %v", kind, out, err)
		}
		return job.ID, start
	}
	terminate := func() {
		cmd := exec.Command(bin, "launch", "terminate", srv.ID)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("terminate: %v %s", err, out)
		}
	}

	for _, convert := range []bool{false, true} {
		setLaunch(convert)
		jobID, start := launch("test")
		inst := waitServer(b, admin, 3*time.Minute, func(s *ferry.SourceServer) bool {
			return s.Launched != nil && s.Launched.JobID == jobID && s.Launched.ConsoleLog != ""
		}).Launched
		running := time.Since(start)
		first := waitFirstLine(b, inst.ConsoleLog, start, 2*time.Minute)
		jl := waitJob(b, admin, jobID, time.Minute)
		b.Logf("test launch, conversion %-5v: command → instance running %6.2fs, → first console line %6.2fs; QEMU alone %5.2fs; launch overhead %6.2fs (goal < 10 s)",
			convert, running.Seconds(), first.Seconds(), qemuFirst.Seconds(), (first - qemuFirst).Seconds())
		logPhases(b, jl, start)
		name := "test-overhead-s"
		if convert {
			name = "test-overhead-convert-s"
		}
		b.ReportMetric((first - qemuFirst).Seconds(), name)
		terminate()
	}

	// Cutover from the drained final sync, conversion off.
	setLaunch(false)
	if err := admin.Do(ctx, "POST", "/servers/"+srv.ID+"/lifecycle", nil, api.ChangeLifecycleRequest{State: ferry.LifecycleReadyForCutover}, nil); err != nil {
		b.Fatal(err)
	}
	jobID, start := launch("cutover")
	inst := waitServer(b, admin, 3*time.Minute, func(s *ferry.SourceServer) bool {
		return s.Launched != nil && s.Launched.JobID == jobID
	}).Launched
	running := time.Since(start)
	jl := waitJob(b, admin, jobID, time.Minute)
	b.Logf("cutover: command → instance running %6.2fs (guest boot excluded; goal < 60 s)", running.Seconds())
	logPhases(b, jl, start)
	b.ReportMetric(running.Seconds(), "cutover-s")
	// The kept cutover instance is this benchmark's to stop.
	exec.Command("pkill", "-f", "--", inst.ID).Run()
}

// logPhases prints the job log with each line's time since start.
func logPhases(b *testing.B, jl *api.JobWithLog, start time.Time) {
	for _, l := range jl.Log {
		b.Logf("  %+7.2fs %-26s %.100s", l.Time.Sub(start).Seconds(), l.Event, l.Message)
	}
}

// qemuAloneFirstLine boots path with QEMU alone (a qcow2 overlay of the
// local file, the qemu target's machine options) and returns the time to
// its first console line.
func qemuAloneFirstLine(b *testing.B, path, dir string) time.Duration {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	ov := filepath.Join(dir, "local.qcow2")
	if out, err := exec.Command(qemu.DefaultImgBinary, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", path, ov).CombinedOutput(); err != nil {
		b.Fatalf("qemu-img: %v: %s", err, out)
	}
	accel := qemu.DetectAccel(b.Context(), qemu.DefaultBinary)
	cpu := "max"
	if accel == "kvm" {
		cpu = "host"
	}
	console := filepath.Join(dir, "console.log")
	start := time.Now()
	cmd := exec.Command(qemu.DefaultBinary, "-machine", "pc", "-accel", accel, "-cpu", cpu, "-smp", "1", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "file:"+console,
		"-drive", "file="+ov+",format=qcow2,if=virtio", "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	return waitFirstLine(b, console, start, time.Minute)
}

// waitFirstLine polls a console log until it holds a complete line.
func waitFirstLine(b *testing.B, path string, start time.Time, within time.Duration) time.Duration {
	deadline := time.Now().Add(within)
	for {
		if data, err := os.ReadFile(path); err == nil && bytes.ContainsRune(bytes.TrimLeft(data, "\r\n\x00 "), '\n') {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			b.Fatalf("no console line in %s within %s", path, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
