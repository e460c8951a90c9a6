package libvirt_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/guestagent"
	"github.com/ferrymigrate/ferry/internal/libvirttest"
	"github.com/ferrymigrate/ferry/internal/testimage"
	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/launch/targettest"
	"github.com/ferrymigrate/ferry/libvirt"
	"github.com/ferrymigrate/ferry/postlaunch"
)

// skipOrFail skips loudly, or fails with FERRY_TEST_REQUIRE_ALL=1.
func skipOrFail(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
		t.Fatal("SKIP: " + msg + "; FERRY_TEST_REQUIRE_ALL=1 forbids skips")
	}
	t.Skip("SKIP: " + msg)
}

// requireLibvirt skips (loudly) unless libvirtd answers and QEMU is
// installed.
func requireLibvirt(t *testing.T) {
	t.Helper()
	for _, b := range []string{"libvirtd", libvirt.DefaultEmulator, libvirt.DefaultImgBinary} {
		if _, err := exec.LookPath(b); err != nil {
			skipOrFail(t, b+" not installed (scripts/setup.sh installs libvirt-daemon-system, qemu-system-x86 and qemu-utils)")
		}
	}
	// virtlogd takes QEMU's output from libvirtd; systemd starts both on
	// a host, libvirttest does here when they are not running.
	libvirttest.Start(func() bool {
		_, err := (&libvirt.Target{}).Available(context.Background())
		return err == nil
	})
	v, err := (&libvirt.Target{}).Available(context.Background())
	if err != nil {
		skipOrFail(t, "libvirtd not reachable and could not be started (needs root): "+err.Error())
	}
	if !libvirttest.VirtlogdUp() {
		skipOrFail(t, "virtlogd is not listening on "+libvirttest.VirtlogdSocket+" and could not be started (needs root)")
	}
	t.Log(v)
}

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func newTarget(t *testing.T, dir string) launch.Target {
	return &libvirt.Target{
		Dir:             dir,
		ShutdownTimeout: 20 * time.Second,
		Logger:          slog.New(slog.NewTextHandler(tlog{t}, nil)),
	}
}

func TestConformance(t *testing.T) {
	requireLibvirt(t)
	img := testimage.ForTest(t)
	targettest.Run(t, newTarget, targettest.Image{
		Path:       img.Path,
		BootMarker: testimage.BootMarker,
		HTTPPort:   testimage.HTTPPort,
		HTTPBody:   testimage.HTTPBody,
	}, targettest.Options{Interrupt: func(tg launch.Target, id string) error { return libvirt.ForgetDomainIDs(tg.(*libvirt.Target), id) }})
}

func TestLibvirtdUnreachable(t *testing.T) {
	dir := t.TempDir()
	tg := &libvirt.Target{Dir: dir, Socket: dir + "/no.sock"}
	_, err := tg.Launch(context.Background(), launch.Spec{
		Name: "x", Disks: []launch.DiskSource{{NBDURL: "nbd+unix:///x?socket=/nonexistent"}}, CPUs: 1, MemoryMiB: 64,
	})
	if !errors.Is(err, launch.ErrUnavailable) {
		t.Fatalf("Launch = %v, want ErrUnavailable", err)
	}
	t.Logf("error (as wanted): %v", err)
	targettest.CheckNothingLeft(t, dir)
}

// TestGuestAgentScript runs a script in the test image's guest through
// qemu-ga on the domain's virtio-serial channel.
func TestGuestAgentScript(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest; skipped with -short")
	}
	requireLibvirt(t)
	img := testimage.ForTest(t)
	url := targettest.ServeImage(t, img.Path)
	tg := newTarget(t, t.TempDir()).(*libvirt.Target)
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
	r := postlaunch.RunScript(ctx, sock, func(ctx context.Context) (guestagent.Agent, error) { return tg.OpenAgent(ctx, inst.ID) }, "echo hello from $(cat /etc/hostname)")
	t.Logf("script after %v: %s: %s", time.Since(start).Round(time.Millisecond), r.Status, r.Output)
	if r.Status != postlaunch.Success || !strings.Contains(r.Output, "hello from ferry-test") {
		b, _ := os.ReadFile(inst.ConsoleLog)
		t.Fatalf("RunScript = %+v, want success; console:\n%s", r, b)
	}
}
