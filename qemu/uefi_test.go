package qemu_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/internal/testimage"
	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/launch/targettest"
	"github.com/ferrymigrate/ferry/postlaunch"
	"github.com/ferrymigrate/ferry/qemu"
)

// TestUEFIBoot boots a disk that only UEFI firmware can boot (an EFI
// system partition with GRUB, no MBR boot code) through the target in
// boot mode UEFI: OVMF read-only, a per-instance copy of its variable
// store, removed at Terminate. The guest reports the firmware it found.
func TestUEFIBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest; skipped with -short")
	}
	requireQEMU(t)
	for _, f := range []string{qemu.DefaultOVMFCode, qemu.DefaultOVMFVars} {
		if _, err := os.Stat(f); err != nil {
			msg := "SKIP: " + f + " missing (scripts/setup.sh installs ovmf)"
			if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
				t.Fatal(msg + "; FERRY_TEST_REQUIRE_ALL=1 forbids skips")
			}
			t.Skip(msg)
		}
	}
	base := testimage.ForTest(t)
	ctx := context.Background()
	start := time.Now()
	img, err := testimage.BuildUEFI(ctx, base, t.TempDir())
	if errors.Is(err, testimage.ErrMissingTool) && os.Getenv("FERRY_TEST_REQUIRE_ALL") != "1" {
		t.Skip("SKIP: " + err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("UEFI image built in %v", time.Since(start).Round(time.Millisecond))

	dir := t.TempDir()
	tg := &qemu.Target{Dir: dir, ShutdownTimeout: time.Second}
	start = time.Now()
	inst, err := tg.Launch(ctx, launch.Spec{
		Name: "uefi", Disks: []launch.DiskSource{{NBDURL: targettest.ServeImage(t, img.Path)}},
		CPUs: 1, MemoryMiB: 512, BootMode: launch.UEFI,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Terminate(ctx, inst.ID)
	vars := filepath.Join(filepath.Dir(inst.ConsoleLog), "OVMF_VARS.fd")
	if _, err := os.Stat(vars); err != nil {
		t.Fatalf("no per-instance UEFI variable store: %v", err)
	}
	bctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	first := postlaunch.WaitConsole(bctx, inst.ConsoleLog, regexp.MustCompile(`\S`))
	firstAt := time.Since(start)
	r := postlaunch.WaitConsole(bctx, inst.ConsoleLog, regexp.MustCompile(testimage.UEFIBootMarker+" firmware=UEFI"))
	if r.Status != postlaunch.Success || first.Status != postlaunch.Success {
		console, _ := os.ReadFile(inst.ConsoleLog)
		t.Fatalf("UEFI boot marker: %s; console:\n%s", r.Output, console)
	}
	t.Logf("UEFI under %s: first console line %.1fs, boot marker %.1fs after Launch", inst.Accel, firstAt.Seconds(), time.Since(start).Seconds())
	if err := tg.Terminate(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vars); !os.IsNotExist(err) {
		t.Fatalf("the instance's UEFI variable store outlived Terminate: %v", err)
	}
	targettest.CheckNothingLeft(t, dir)
}
