package qemu_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/guestagent"
	"github.com/ferrymigrate/ferry/internal/testimage"
	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/launch/targettest"
	"github.com/ferrymigrate/ferry/postlaunch"
	"github.com/ferrymigrate/ferry/qemu"
)

// requireQEMU skips loudly when QEMU is not installed, or fails with
// FERRY_TEST_REQUIRE_ALL=1.
func requireQEMU(t *testing.T) {
	t.Helper()
	for _, b := range []string{qemu.DefaultBinary, qemu.DefaultImgBinary} {
		if _, err := exec.LookPath(b); err != nil {
			msg := "SKIP: " + b + " not installed (scripts/setup.sh installs it)"
			if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
				t.Fatal(msg + "; FERRY_TEST_REQUIRE_ALL=1 forbids skips")
			}
			t.Skip(msg)
		}
	}
}

func newTarget(t *testing.T, dir string) launch.Target {
	return &qemu.Target{
		Dir:             dir,
		ShutdownTimeout: 20 * time.Second,
		Logger:          slog.New(slog.NewTextHandler(tlog{t}, nil)),
	}
}

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func TestConformance(t *testing.T) {
	requireQEMU(t)
	img := testimage.ForTest(t)
	targettest.Run(t, newTarget, targettest.Image{
		Path:       img.Path,
		BootMarker: testimage.BootMarker,
		HTTPPort:   testimage.HTTPPort,
		HTTPBody:   testimage.HTTPBody,
	}, targettest.Options{Interrupt: func(tg launch.Target, id string) error { return qemu.ForgetPID(tg.(*qemu.Target), id) }})
}

func TestLaunchQEMUMissing(t *testing.T) {
	dir := t.TempDir()
	tg := &qemu.Target{Dir: dir, Binary: filepath.Join(dir, "no-such-qemu")}
	_, err := tg.Launch(context.Background(), launch.Spec{
		Name: "x", Disks: []launch.DiskSource{{NBDURL: "nbd+unix:///x?socket=/nonexistent"}}, CPUs: 1, MemoryMiB: 64,
	})
	if !errors.Is(err, launch.ErrUnavailable) {
		t.Fatalf("Launch = %v, want ErrUnavailable", err)
	}
	t.Logf("error (as wanted): %v", err)
	targettest.CheckNothingLeft(t, dir)
}

// TestLaunchWorkDirTooLongForAgentSocket: an instance directory with room
// for qmp.sock but not for the guest agent's agent.sock is refused before
// QEMU starts, not by QEMU after the overlays are made.
func TestLaunchWorkDirTooLongForAgentSocket(t *testing.T) {
	requireQEMU(t)
	dir := t.TempDir()
	// WORKDIR/x-XXXXXXXX/agent.sock is 108 bytes: one too many.
	work := dir + "/"
	work += strings.Repeat("w", 87-len(work))
	tg := &qemu.Target{Dir: dir, GuestAgent: true}
	_, err := tg.Launch(context.Background(), launch.Spec{
		Name: "x", Disks: []launch.DiskSource{{NBDURL: "nbd+unix:///x?socket=/nonexistent"}}, CPUs: 1, MemoryMiB: 64, WorkDir: work,
	})
	if !errors.Is(err, launch.ErrInvalidSpec) || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("Launch = %v, want ErrInvalidSpec for a directory too long", err)
	}
	targettest.CheckNothingLeft(t, dir)
}

func TestLaunchUEFIWithoutFirmware(t *testing.T) {
	requireQEMU(t)
	dir := t.TempDir()
	tg := &qemu.Target{Dir: dir, OVMFCode: filepath.Join(dir, "none.fd")}
	_, err := tg.Launch(context.Background(), launch.Spec{
		Name: "x", Disks: []launch.DiskSource{{NBDURL: "nbd+unix:///x?socket=/nonexistent"}}, CPUs: 1, MemoryMiB: 64, BootMode: launch.UEFI,
	})
	if !errors.Is(err, launch.ErrNotSupported) {
		t.Fatalf("Launch = %v, want ErrNotSupported", err)
	}
	targettest.CheckNothingLeft(t, dir)
}

// TestBootOverhead measures what Ferry adds to a test launch: command to
// first console line through the target (overlay over an NBD export),
// minus QEMU's own boot of the same image from a local file with the same
// machine options. Goal (issue 3): under 10 s.
func TestBootOverhead(t *testing.T) {
	if testing.Short() {
		t.Skip("boots two guests; skipped with -short")
	}
	requireQEMU(t)
	img := testimage.ForTest(t)
	ctx := context.Background()
	first := regexp.MustCompile(`\S`)
	marker := regexp.MustCompile(testimage.BootMarker)

	// Baseline: QEMU alone on a qcow2 overlay of the local file.
	dir := t.TempDir()
	ov := filepath.Join(dir, "local.qcow2")
	if out, err := exec.Command(qemu.DefaultImgBinary, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", img.Path, ov).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	accel := qemu.DetectAccel(ctx, qemu.DefaultBinary)
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
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	bctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if r := postlaunch.WaitConsole(bctx, console, first); r.Status != postlaunch.Success {
		t.Fatal(r.Output)
	}
	baseFirst := time.Since(start)
	if r := postlaunch.WaitConsole(bctx, console, marker); r.Status != postlaunch.Success {
		t.Fatal(r.Output)
	}
	baseMarker := time.Since(start)
	cmd.Process.Kill()
	cmd.Wait()

	// Through the target, over NBD.
	url := targettest.ServeImage(t, img.Path)
	tg := newTarget(t, t.TempDir())
	start = time.Now()
	inst, err := tg.Launch(ctx, launch.Spec{Name: "overhead", Disks: []launch.DiskSource{{NBDURL: url}}, CPUs: 1, MemoryMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Terminate(context.Background(), inst.ID) })
	launched := time.Since(start)
	if r := postlaunch.WaitConsole(bctx, inst.ConsoleLog, first); r.Status != postlaunch.Success {
		t.Fatal(r.Output)
	}
	ferryFirst := time.Since(start)
	if r := postlaunch.WaitConsole(bctx, inst.ConsoleLog, marker); r.Status != postlaunch.Success {
		t.Fatal(r.Output)
	}
	ferryMarker := time.Since(start)
	t.Logf("accel %s; QEMU alone from a local file: first console line %v, boot marker %v", accel, baseFirst.Round(time.Millisecond), baseMarker.Round(time.Millisecond))
	t.Logf("through the qemu target over NBD: Launch returned %v, first console line %v, boot marker %v", launched.Round(time.Millisecond), ferryFirst.Round(time.Millisecond), ferryMarker.Round(time.Millisecond))
	t.Logf("launch overhead (first console line, target minus QEMU alone): %v; at the boot marker: %v (goal < 10s)", (ferryFirst - baseFirst).Round(time.Millisecond), (ferryMarker - baseMarker).Round(time.Millisecond))
	if ferryFirst-baseFirst > 10*time.Second {
		t.Errorf("launch overhead %v exceeds the 10 s goal", ferryFirst-baseFirst)
	}

	// The guest powers itself off: Status says so, Terminate cleans up.
	if err := qemu.PowerDown(ctx, tg.(*qemu.Target), inst.ID); err != nil {
		t.Fatal(err)
	}
	// Under TCG on a loaded machine the guest's ACPI shutdown can take a
	// while; this checks that it happens and is seen, not how fast.
	deadline := time.Now().Add(90 * time.Second)
	for {
		st, err := tg.Status(ctx, inst.ID)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == launch.Stopped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance still %s 90 s after the power button", st.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := tg.Terminate(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(inst.ConsoleLog); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("console log left after Terminate of a stopped instance: %v", err)
	}
}

// TestGuestAgentScript runs a script in the test image's guest through
// Debian's qemu-ga on the instance's virtio-serial channel.
func TestGuestAgentScript(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest; skipped with -short")
	}
	requireQEMU(t)
	img := testimage.ForTest(t)
	url := targettest.ServeImage(t, img.Path)
	tg := newTarget(t, t.TempDir()).(*qemu.Target)
	tg.GuestAgent = true
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	inst, err := tg.Launch(ctx, launch.Spec{Name: "agent", Disks: []launch.DiskSource{{NBDURL: url}}, CPUs: 1, MemoryMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Terminate(context.Background(), inst.ID) })
	sock, err := tg.AgentSocket(inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(inst.ConsoleLog)
			t.Logf("console:\n%s", b)
		}
	})
	r := postlaunch.RunScript(ctx, sock, func(ctx context.Context) (guestagent.Agent, error) { return tg.OpenAgent(ctx, inst.ID) }, "echo hello from $(cat /etc/hostname); echo to-stderr >&2; exit 3")
	t.Logf("script after %v: %s: %s", time.Since(start).Round(time.Millisecond), r.Status, r.Output)
	if r.Status != postlaunch.Failed || !strings.Contains(r.Output, "exit code 3") || !strings.Contains(r.Output, "hello from ferry-test") || !strings.Contains(r.Output, "to-stderr") {
		t.Fatalf("RunScript = %+v, want a failure with exit code 3 and both outputs", r)
	}
	r = postlaunch.RunScript(ctx, sock, func(ctx context.Context) (guestagent.Agent, error) { return tg.OpenAgent(ctx, inst.ID) }, "ip addr show eth0 | grep -q "+testimage.GuestAddr)
	if r.Status != postlaunch.Success {
		t.Fatalf("RunScript = %+v, want success", r)
	}
	t.Logf("second script: %s", r.Output)
	if _, err := newTarget(t, t.TempDir()).(*qemu.Target).AgentSocket(inst.ID); !errors.Is(err, launch.ErrNotFound) {
		t.Errorf("AgentSocket on another target = %v, want ErrNotFound", err)
	}
}
