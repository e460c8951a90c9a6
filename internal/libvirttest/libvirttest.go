// Package libvirttest starts libvirtd and virtlogd for tests on a host
// without systemd, and creates transient test domains.
package libvirttest

import (
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// VirtlogdSocket is virtlogd's socket, which libvirtd hands QEMU's
// output to.
const VirtlogdSocket = "/run/libvirt/virtlogd-sock"

var mu sync.Mutex

// Start makes sure virtlogd and libvirtd are running when they are
// installed (up says whether libvirtd answers). It checks on every call,
// so that a daemon that died between two tests is started again, and it
// leaves the daemons it starts running: go test runs packages in
// parallel, and a package that stopped them at its end would pull them
// from under another package's tests. A socket file that nothing
// listens on (a daemon that died) is removed before the restart.
func Start(up func() bool) {
	mu.Lock()
	defer mu.Unlock()
	startDaemon("virtlogd", VirtlogdSocket, func() bool { return listening(VirtlogdSocket) })
	startDaemon("libvirtd", "", up)
}

// VirtlogdUp reports whether virtlogd accepts connections on its socket.
func VirtlogdUp() bool { return listening(VirtlogdSocket) }

func listening(socket string) bool {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func startDaemon(name, socket string, up func() bool) {
	if up() {
		return
	}
	bin, err := exec.LookPath(name)
	if err != nil || os.Geteuid() != 0 {
		return // the caller's check says why
	}
	if socket != "" {
		if _, err := os.Stat(socket); err == nil {
			fmt.Fprintf(os.Stderr, "libvirttest: %s is not listening on %s (it died); starting it again\n", name, socket)
			os.Remove(socket)
		}
	}
	// -d: the daemon detaches into its own session, outliving this test
	// process like the one scripts/test-services.sh starts.
	out, err := exec.Command(bin, "-d").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "libvirttest: %s -d: %v: %s\n", name, err, out)
		return
	}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && !up(); {
		time.Sleep(100 * time.Millisecond)
	}
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
