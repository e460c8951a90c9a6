package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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

// TestTerminateKillsAStartingQEMU: a server killed while QEMU was still
// starting recorded the instance without a PID, and QEMU has written no
// pidfile yet. Terminate finds the process by its QMP socket and kills it
// before it removes the files, so nothing runs on once they are gone.
func TestTerminateKillsAStartingQEMU(t *testing.T) {
	dir := t.TempDir()
	tg := &Target{Dir: dir}
	st := &state{ID: "test-1", Dir: filepath.Join(dir, "test-1"), QMP: filepath.Join(dir, "test-1", "qmp.sock")}
	if err := os.MkdirAll(st.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := tg.states().Write(st.ID, st); err != nil {
		t.Fatal(err)
	}
	// A stand-in for QEMU half-way through -daemonize: a process whose
	// command line names the QMP socket as QEMU's does.
	cmd := exec.Command("sh", "-c", "while :; do sleep 1; done", "unix:"+escapeOpt(st.QMP)+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	if pids := processesOf(st); !slices.Contains(pids, cmd.Process.Pid) {
		t.Fatalf("processesOf = %v, want %d among them", pids, cmd.Process.Pid)
	}
	if err := tg.Terminate(t.Context(), st.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the starting process survived Terminate")
	}
	if _, err := os.Stat(st.Dir); !os.IsNotExist(err) {
		t.Errorf("instance files left: %v", err)
	}
	if err := tg.Terminate(t.Context(), st.ID); err != nil {
		t.Errorf("terminating it again: %v, want nothing to do", err)
	}
}
