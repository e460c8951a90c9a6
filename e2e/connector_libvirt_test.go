package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/connector"
	"github.com/ferrymigrate/ferry/internal/libvirttest"
)

func libvirtdUp() bool {
	h, err := connector.DialLibvirt(context.Background(), "qemu:///system")
	if err != nil {
		return false
	}
	h.Close()
	return true
}

// startLibvirtDomain starts a paused transient domain (no guest OS) with
// one qcow2 disk, destroyed at the end of the test.
func startLibvirtDomain(t *testing.T, l *golibvirt.Libvirt, dir, name string) string {
	t.Helper()
	disk := filepath.Join(dir, name+".qcow2")
	mustRun(t, "qemu-img", "create", "-q", "-f", "qcow2", disk, "16M")
	uuid := libvirttest.NewUUID()
	dom, err := l.DomainCreateXML(libvirttest.DomainXML(name, uuid, disk), libvirttest.Paused)
	if err != nil {
		t.Fatalf("start libvirt domain %s: %v", name, err)
	}
	t.Cleanup(func() { l.DomainDestroy(dom) })
	return uuid
}

// 'ferry connector run --libvirt qemu:///system' registers the host's
// running domains as DISCOVERED source servers (machine id from the
// domain UUID, disks by target device), and a domain started while it
// runs within seconds.
func TestConnectorLibvirtRegistersDomains(t *testing.T) {
	for _, b := range []string{"qemu-system-x86_64", "qemu-img", "libvirtd"} {
		if _, err := exec.LookPath(b); err != nil {
			skip(t, b+" is not installed")
		}
	}
	libvirttest.Start(libvirtdUp)
	if !libvirtdUp() {
		skip(t, "libvirtd is not reachable on "+connector.DefaultLibvirtSocket+" and could not be started (needs root)")
	}
	if !libvirttest.VirtlogdUp() {
		skip(t, "virtlogd is not listening on "+libvirttest.VirtlogdSocket+" and could not be started (needs root)")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		os.Chmod(d, 0o711) // libvirt's QEMU user opens the disks here
	}
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(connector.DefaultLibvirtSocket)))
	if err := l.ConnectToURI(golibvirt.QEMUSystem); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Disconnect() }) // after the domains' cleanups
	first := startLibvirtDomain(t, l, dir, "ferry-e2e-lv1")
	// A domain --domain leaves out: never registered.
	other := startLibvirtDomain(t, l, dir, "ferry-e2e-other")

	s := startServer(t, filepath.Join(dir, "server"))
	ctx := t.Context()
	admin, err := clientFor(s, s.token)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "connector")
	runConnector(t, s, admin, state, "--libvirt", "qemu:///system", "--domain", "ferry-e2e-lv*")
	// Only the domains --domain names are registered.
	waitDiscovered := func(name, uuid string) {
		t.Helper()
		start := time.Now()
		for deadline := start.Add(30 * time.Second); ; {
			list, err := admin.ListServers(ctx, nil)
			if err == nil {
				for _, srv := range list.Items {
					if srv.MachineID == "qemu-"+uuid {
						if srv.Hostname != name || srv.Lifecycle != ferry.LifecycleDiscovered || len(srv.Disks) != 1 || srv.Disks[0].Name != "vda" || srv.Disks[0].SizeBytes != 16<<20 {
							t.Fatalf("registered domain %s: %+v", name, srv)
						}
						t.Logf("domain %s registered DISCOVERED as %s after %v", name, srv.ID, time.Since(start).Round(time.Millisecond))
						return
					}
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("domain %s (%s) not registered within 30s (err %v)", name, uuid, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitDiscovered("ferry-e2e-lv1", first)
	second := startLibvirtDomain(t, l, dir, "ferry-e2e-lv2")
	waitDiscovered("ferry-e2e-lv2", second)
	list, err := admin.ListServers(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range list.Items {
		if srv.MachineID == "qemu-"+other || srv.Hostname == "ferry-e2e-other" {
			t.Errorf("domain ferry-e2e-other registered though --domain leaves it out: %+v", srv)
		}
	}
	if len(list.Items) != 2 {
		t.Errorf("%d servers registered, want the 2 --domain names", len(list.Items))
	}
	out := run(t, nil, "connector", "vms", "--state-dir", state)
	for _, n := range []string{"ferry-e2e-lv1", "ferry-e2e-lv2", "qemu:///system#ferry-e2e-lv2"} {
		if !strings.Contains(out, n) {
			t.Errorf("connector vms does not list %s:\n%s", n, out)
		}
	}
}
