// Package libvirttest starts libvirtd and virtlogd for tests on a host
// without systemd, and creates transient test domains.
package libvirttest

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// VirtlogdSocket is virtlogd's socket, which libvirtd hands QEMU's
// output to.
const VirtlogdSocket = "/run/libvirt/virtlogd-sock"

var (
	once  sync.Once
	stops []func()
	mu    sync.Mutex
)

// Start runs virtlogd and libvirtd as children when they are installed
// but not running (up says whether libvirtd answers), once per process;
// Stop ends the ones it started.
func Start(up func() bool) {
	once.Do(func() {
		startDaemon("virtlogd", func() bool { _, err := os.Stat(VirtlogdSocket); return err == nil })
		startDaemon("libvirtd", up)
	})
}

// Stop stops the daemons Start started (call it from TestMain).
func Stop() {
	mu.Lock()
	defer mu.Unlock()
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
	stops = nil
}

func startDaemon(name string, up func() bool) {
	if up() {
		return
	}
	bin, err := exec.LookPath(name)
	if err != nil || os.Geteuid() != 0 {
		return // the caller's check says why
	}
	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return
	}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && !up(); {
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	stops = append(stops, func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
}

// NewUUID is a random version-4 UUID.
func NewUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// DomainXML is a TCG domain (type qemu: /dev/kvm may not boot guests)
// with no guest OS and the given images (qcow2, or raw by a .raw suffix)
// as virtio disks vda, vdb, ...; start it paused.
func DomainXML(name, uuid string, disks ...string) string {
	var devs strings.Builder
	for i, d := range disks {
		typ := "qcow2"
		if strings.HasSuffix(d, ".raw") {
			typ = "raw"
		}
		fmt.Fprintf(&devs, `<disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s'/><target dev='vd%c' bus='virtio'/></disk>`,
			typ, d, 'a'+i)
	}
	return fmt.Sprintf(`<domain type='qemu'><name>%s</name><uuid>%s</uuid><memory unit='MiB'>64</memory><vcpu>2</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>%s</devices></domain>`,
		name, uuid, devs.String())
}

// Paused is the DomainCreateXML flag that starts a domain paused.
const Paused = golibvirt.DomainStartPaused
