package qemu

import (
	"context"
	"os/exec"
	"slices"
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
