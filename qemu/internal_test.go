package qemu

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/launch"
)

func TestEscapeOpt(t *testing.T) {
	if got := escapeOpt("/a,b/c"); got != "/a,,b/c" {
		t.Errorf("escapeOpt = %q", got)
	}
}

func TestArgv(t *testing.T) {
	st := &state{ID: "web-1", Dir: "/w/web-1", QMP: "/w/web-1/qmp.sock", ConsoleLog: "/w/a,b/console.log", Accel: "tcg",
		Overlays: []string{"/w/web-1/disk0.qcow2"}, Forwards: []launch.Forward{{GuestPort: 22, HostPort: 2222}}}
	tg := &Target{}
	a := tg.argv(st, launch.Spec{CPUs: 2, MemoryMiB: 512}, "127.0.0.1")
	for _, want := range []string{"-daemonize", "tcg", "max", "512", "2",
		"file,id=console,path=/w/a,,b/console.log",
		"unix:/w/web-1/qmp.sock,server=on,wait=off",
		"file=/w/web-1/disk0.qcow2,format=qcow2,if=virtio,index=0,discard=unmap",
		"user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"} {
		if !slices.Contains(a, want) {
			t.Errorf("argv %q lacks %q", a, want)
		}
	}
}

func TestArgvBridgeUEFI(t *testing.T) {
	st := &state{ID: "web-1", Dir: "/w/web-1", QMP: "/w/web-1/qmp.sock", ConsoleLog: "/w/web-1/console.log", Accel: "tcg",
		Overlays: []string{"/w/web-1/disk0.qcow2"}, Tap: "ferry0badf00d", MAC: "52:54:00:01:02:03", OVMFVars: "/w/web-1/OVMF_VARS.fd"}
	tg := &Target{OVMFCode: "/fw/a,b/OVMF_CODE.fd"}
	a := tg.argv(st, launch.Spec{CPUs: 1, MemoryMiB: 512}, "127.0.0.1")
	for _, want := range []string{
		"tap,id=net0,script=no,downscript=no,ifname=ferry0badf00d",
		"virtio-net-pci,netdev=net0,mac=52:54:00:01:02:03",
		"if=pflash,format=raw,unit=0,readonly=on,file=/fw/a,,b/OVMF_CODE.fd",
		"if=pflash,format=raw,unit=1,file=/w/web-1/OVMF_VARS.fd",
	} {
		if !slices.Contains(a, want) {
			t.Errorf("argv %q lacks %q", a, want)
		}
	}
	for _, arg := range a {
		if strings.HasPrefix(arg, "user,") {
			t.Errorf("bridged argv has a user-mode network: %q", arg)
		}
	}
}

func TestTapName(t *testing.T) {
	for _, id := range []string{"test-abcdef12-0054f275", "x"} {
		if n := tapName(id); len(n) > 15 || !strings.HasPrefix(n, "ferry") {
			t.Errorf("tapName(%q) = %q", id, n)
		}
	}
}

func TestDetectAccel(t *testing.T) {
	if testing.Short() {
		t.Skip("starts QEMU; skipped with -short")
	}
	bin, err := exec.LookPath(DefaultBinary)
	if err != nil {
		t.Skip("SKIP: no " + DefaultBinary)
	}
	a := detectAccel(context.Background(), bin)
	if a != "kvm" && a != "tcg" {
		t.Fatalf("detectAccel = %q", a)
	}
	t.Logf("accelerator here: %s", a)
}
