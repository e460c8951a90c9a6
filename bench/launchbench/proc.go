package launchbench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ferrymigrate/ferry/internal/testimage"
	"github.com/ferrymigrate/ferry/qemu"
)

// proc is a child process of the bench with its output in a log file.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once it has exited
}

// startProc starts bin with args, its output going to logPath.
func startProc(bin string, args []string, logPath string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("log of %s: %w", filepath.Base(bin), err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); lf.Close(); close(p.done) }()
	return p, nil
}

// stop ends the process: SIGTERM, then SIGKILL after 10 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the end of the process's log, for errors.
func (p *proc) tail() string {
	b, err := os.ReadFile(p.log)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	return "\n" + filepath.Base(p.log) + " (end):\n" + tail(b, 2000)
}

// qemuAloneFirstLine boots path with QEMU alone (a qcow2 overlay of the
// local file in dir, the qemu target's machine options: machine pc, its
// accelerator and CPU model, one CPU, 256 MiB, virtio disk and network)
// and returns the time from QEMU's start to its first console line, and
// the accelerator. QEMU and the overlay are removed before it returns.
func qemuAloneFirstLine(ctx context.Context, path, dir string) (time.Duration, string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, "", fmt.Errorf("launch bench: %w", err)
	}
	defer os.RemoveAll(dir)
	ov := filepath.Join(dir, "local.qcow2")
	if out, err := exec.CommandContext(ctx, qemu.DefaultImgBinary, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", path, ov).CombinedOutput(); err != nil {
		return 0, "", fmt.Errorf("launch bench: qemu-img create: %w: %s", err, bytes.TrimSpace(out))
	}
	accel := qemu.DetectAccel(ctx, qemu.DefaultBinary)
	cpu := "max"
	if accel == "kvm" {
		cpu = "host"
	}
	console := filepath.Join(dir, "console.log")
	start := time.Now()
	p, err := startProc(qemu.DefaultBinary, []string{"-machine", "pc", "-accel", accel, "-cpu", cpu, "-smp", "1", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "file:" + console,
		"-drive", "file=" + ov + ",format=qcow2,if=virtio", "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"},
		filepath.Join(dir, "qemu.log"))
	if err != nil {
		return 0, "", fmt.Errorf("launch bench: QEMU alone: %w", err)
	}
	defer p.stop()
	d, err := waitConsole(ctx, console, start, time.Minute, firstLine)
	if err != nil {
		return 0, "", fmt.Errorf("launch bench: QEMU alone: %w%s", err, p.tail())
	}
	return d, accel, nil
}

// firstLine reports whether a console log holds a complete line (leading
// blank lines, NULs and spaces do not count).
func firstLine(data []byte) bool {
	return bytes.ContainsRune(bytes.TrimLeft(data, "\r\n\x00 "), '\n')
}

// bootMarker reports whether a console log holds the test image's boot
// marker (its network and HTTP server are up).
func bootMarker(data []byte) bool { return bytes.Contains(data, []byte(testimage.BootMarker)) }

// waitConsole polls a console log every 10 ms until done holds for its
// contents, and returns the time since start.
func waitConsole(ctx context.Context, path string, start time.Time, within time.Duration, done func([]byte) bool) (time.Duration, error) {
	deadline := time.Now().Add(within)
	for {
		if data, err := os.ReadFile(path); err == nil && done(data) {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(path)
			return 0, fmt.Errorf("console %s: not there within %v; it holds %q", path, within, tail(data, 500))
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// terminateInstances stops and removes every instance the qemu target
// has state for in dir (QEMU by the pid in its state file, checked
// against its command line; its overlays and files).
func terminateInstances(dir string, logf func(string, ...any)) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t := qemu.New(dir)
	t.ShutdownTimeout = 5 * time.Second
	insts, err := t.List(ctx)
	if err != nil {
		logf("launch: list the instances left in %s: %v", dir, err)
		return
	}
	for _, in := range insts {
		if err := t.Terminate(ctx, in.ID); err != nil {
			logf("launch: terminate instance %s: %v", in.ID, err)
		}
	}
}
