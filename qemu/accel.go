package qemu

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// kvmProbe is a 512-byte boot sector (source: kvmprobe.S) that prints "R"
// to COM1, switches to 32-bit protected mode, prints "P", returns from an
// interrupt frame with iret and prints "K". A KVM that cannot run ordinary
// guests (nested or paravirtual without unrestricted guest support) stops
// with an emulation failure before the "K": SYSLINUX and Linux do the same.
var kvmProbe = func() []byte {
	code := []byte{
		0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xba, 0xf8, 0x03, 0xb0, 0x52, 0xee,
		0x0f, 0x01, 0x16, 0x68, 0x7c, 0x0f, 0x20, 0xc0, 0x66, 0x83, 0xc8, 0x01, 0x0f, 0x22, 0xc0, 0x66,
		0xea, 0x27, 0x7c, 0x00, 0x00, 0x08, 0x00, 0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xd0, 0x8e,
		0xc0, 0xbc, 0x00, 0x7c, 0x00, 0x00, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x50, 0xee, 0x9c, 0x6a, 0x08,
		0x68, 0x46, 0x7c, 0x00, 0x00, 0xcf, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x4b, 0xee, 0xf4, 0xeb, 0xfd,
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00,
		0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, 0x17, 0x00, 0x50, 0x7c, 0x00, 0x00,
	}
	b := make([]byte, 512)
	copy(b, code)
	b[510], b[511] = 0x55, 0xaa
	return b
}()

// probeTimeout bounds the KVM probe; a working KVM prints "K" in well
// under a second, and TCG is used when it does not.
const probeTimeout = 4 * time.Second

var accelCache struct {
	sync.Mutex
	m map[string]string // binary → "kvm" or "tcg"
}

// DetectAccel returns "kvm" if binary (a qemu-system-x86_64, looked up on
// PATH when not absolute) runs the KVM probe guest to completion under KVM,
// else "tcg". The answer is cached per binary for the process. Other
// targets that run QEMU (libvirt) use it to pick the domain type.
func DetectAccel(ctx context.Context, binary string) string { return detectAccel(ctx, binary) }

// detectAccel returns "kvm" if binary runs the probe guest to completion
// under KVM, else "tcg". The answer is cached per binary for the process.
func detectAccel(ctx context.Context, binary string) string {
	if p, err := exec.LookPath(binary); err == nil {
		binary = p
	}
	accelCache.Lock()
	defer accelCache.Unlock()
	if a, ok := accelCache.m[binary]; ok {
		return a
	}
	a := "tcg"
	if kvmWorks(ctx, binary) {
		a = "kvm"
	}
	if accelCache.m == nil {
		accelCache.m = map[string]string{}
	}
	accelCache.m[binary] = a
	return a
}

func kvmWorks(ctx context.Context, binary string) bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	dir, err := os.MkdirTemp("", "ferry-kvm-probe-")
	if err != nil {
		return false
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "probe.img")
	serial := filepath.Join(dir, "serial.log")
	if err := os.WriteFile(img, kvmProbe, 0o600); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "-accel", "kvm", "-machine", "pc", "-nodefaults",
		"-no-user-config", "-display", "none", "-m", "16",
		"-drive", "file="+escapeOpt(img)+",format=raw,if=ide",
		"-serial", "file:"+serial)
	// QEMU reports a KVM emulation failure on stderr and stops the guest:
	// watch for it so that a broken KVM costs a fraction of a second.
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	// The probe must not outlive a server killed while it runs (the fault
	// suite found hung probes left behind by kill -9). The signal follows
	// the thread that started it, so that thread stays locked until the
	// probe is reaped.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return false
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-exited:
			b, _ := os.ReadFile(serial)
			return bytes.Contains(b, []byte("K"))
		case <-tick.C:
			if b, _ := os.ReadFile(serial); bytes.Contains(b, []byte("K")) {
				return true
			}
			if stderr.Contains("KVM internal error") || stderr.Contains("emulation failure") {
				return false
			}
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Contains reports whether s has been written.
func (b *syncBuffer) Contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Contains(b.buf.Bytes(), []byte(s))
}
