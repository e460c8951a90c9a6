package connector

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/internal/libvirttest"
)

func libvirtdUp() bool {
	h, err := DialLibvirt(context.Background(), "qemu:///system")
	if err != nil {
		return false
	}
	h.Close()
	return true
}

// requireLibvirt starts virtlogd and libvirtd when they are installed but
// not running, and skips loudly (fails with FERRY_TEST_REQUIRE_ALL=1) when
// they or QEMU are absent.
func requireLibvirt(t *testing.T) {
	t.Helper()
	requireQEMU(t)
	if _, err := exec.LookPath("libvirtd"); err != nil {
		skip(t, "libvirtd is not installed (apt-get install libvirt-daemon-system)")
	}
	libvirttest.Start(libvirtdUp)
	if !libvirtdUp() {
		skip(t, "libvirtd is not reachable on "+DefaultLibvirtSocket+" and could not be started (needs root)")
	}
	if !libvirttest.VirtlogdUp() {
		skip(t, "virtlogd is not listening on "+libvirttest.VirtlogdSocket+" and could not be started (needs root)")
	}
}

// lvVM is a transient libvirt domain (TCG, paused: no guest OS) with
// virtio disks.
type lvVM struct {
	h    *LibvirtHost
	l    *golibvirt.Libvirt
	dom  golibvirt.Domain
	mon  Monitor
	dir  string
	name string
	uuid string
}

// startDomain creates and starts a paused transient domain with the
// given disk images (qcow2 or raw by extension) as vda, vdb, ...
func startDomain(t *testing.T, dir string, disks ...string) *lvVM {
	t.Helper()
	uuid := libvirttest.NewUUID()
	v := &lvVM{dir: dir, name: "ferry-conn-test-" + uuid[:8], uuid: uuid}
	xml := libvirttest.DomainXML(v.name, uuid, disks...)
	h, err := DialLibvirt(t.Context(), "qemu:///system")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	v.h = h
	v.l, err = h.conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	v.dom, err = v.l.DomainCreateXML(xml, libvirttest.Paused)
	if err != nil {
		t.Fatalf("start libvirt domain: %v", err)
	}
	t.Cleanup(func() { v.destroy() })
	v.mon = h.Monitor(LibvirtDomain{Name: v.dom.Name, UUID: uuid, dom: v.dom})
	return v
}

func (v *lvVM) destroy() {
	if l, err := v.h.conn(context.Background()); err == nil {
		l.DomainDestroy(v.dom)
	}
}

func (v *lvVM) hmp(t *testing.T, line string) {
	t.Helper()
	var out string
	if err := v.mon.Execute(t.Context(), "human-monitor-command", map[string]any{"command-line": line}, &out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "rror") || strings.Contains(out, "onflict") {
		t.Fatalf("%s: %s", line, out)
	}
}

// qdev is the block backend of the i-th virtio disk, which qemu-io -d
// writes through (the guest device holds the node's write permission).
func qdev(i int) string { return fmt.Sprintf("/machine/peripheral/virtio-disk%d/virtio-backend", i) }

// write writes n bytes of fresh random data at off of disk i through
// qemu-io in the QEMU process (which runs as libvirt's user and reads the
// data file itself).
func (v *lvVM) write(t *testing.T, i int, off, n int64) {
	t.Helper()
	src := filepath.Join(v.dir, "random.bin")
	f, err := os.OpenFile(src, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, randReader{}, n); err != nil {
		t.Fatal(err)
	}
	f.Close()
	v.hmp(t, fmt.Sprintf(`qemu-io -d %s "write -s %s %d %d"`, qdev(i), src, off, n))
}

// diskSHA is the sha256 of disk image i as raw, after QEMU flushed it.
func (v *lvVM) diskSHA(t *testing.T, i int, path string) string {
	t.Helper()
	v.hmp(t, fmt.Sprintf(`qemu-io -d %s "flush"`, qdev(i)))
	raw := filepath.Join(t.TempDir(), "disk.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", path, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	return fileSHA(t, raw)
}

// reachable makes dir and its parent (test directories, 0700) searchable
// by libvirt's QEMU user, which opens the disks and the work directory.
func reachable(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
}

// A libvirt domain replicated through libvirtd: discovered with its
// libvirt names, a full then incremental runs on a qcow2 and a raw disk
// sending exactly what was written, each snapshot equal to the disk at
// the run's point; a domain that stopped fails the run with a reason.
func TestConnectorReplicatesLibvirtDomain(t *testing.T) {
	requireLibvirt(t)
	dir := t.TempDir()
	reachable(t, dir)
	qcow := filepath.Join(dir, "vda.qcow2")
	raw := filepath.Join(dir, "vdb.raw")
	for _, c := range [][]string{{"create", "-q", "-f", "qcow2", qcow, "64M"}, {"create", "-q", "-f", "raw", raw, "16M"}} {
		if out, err := exec.Command("qemu-img", c...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v\n%s", err, out)
		}
	}
	v := startDomain(t, dir, qcow, raw)
	v.write(t, 0, 0, 8<<20)
	v.write(t, 0, 20<<20, 4<<20)
	v.write(t, 1, 1<<20, 2<<20)

	ls := startServer(t, filepath.Join(dir, "server"))
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	doms, err := v.h.Domains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var d *LibvirtDomain
	for i := range doms {
		if doms[i].UUID == v.uuid {
			d = &doms[i]
		}
	}
	if d == nil {
		t.Fatalf("Domains = %+v: the test domain %s (%s) is not listed", doms, v.name, v.uuid)
	}
	src, err := OpenLibvirt(ctx, Options{ServerURL: "https://" + ls.s.APIAddr, InstallToken: ls.token, CAFingerprint: ls.s.CAFingerprint(),
		StateDir: filepath.Join(dir, "connector"), Logger: log}, v.h, *d)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if want := "qemu-" + v.uuid; src.MachineID != want {
		t.Errorf("machine id %s, want %s (the same as a QMP source of this VM)", src.MachineID, want)
	}
	srv, err := ls.s.Store().Server(ctx, src.ServerID)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, d := range srv.Disks {
		names[d.Name] = true
	}
	if srv.Hostname != v.name || srv.CPUs != 2 || srv.RAMBytes != 64<<20 || len(srv.Disks) != 2 || !names["vda"] || !names["vdb"] {
		t.Fatalf("source server facts: hostname %q cpus %d ram %d disks %+v", srv.Hostname, srv.CPUs, srv.RAMBytes, srv.Disks)
	}
	// By disk: its index in the domain, image, and what each run expects.
	disks := map[string]struct {
		i    int
		path string
	}{"vda": {0, qcow}, "vdb": {1, raw}}
	run := func(name string, want map[string]Mode, sent map[string]int64) {
		t.Helper()
		start := time.Now()
		res, err := src.Run(ctx)
		if err != nil {
			t.Fatalf("%s run: %v", name, err)
		}
		for _, dr := range res.Disks {
			t.Logf("%s run %s (%s) in %.2fs: tracked %d KiB, read %d KiB, sent %d KiB raw, %d KiB on the wire",
				name, dr.Name, dr.Mode, time.Since(start).Seconds(), dr.TrackedBytes>>10, dr.ReadBytes>>10, dr.RawSentBytes>>10, dr.SentBytes>>10)
			if dr.Mode != want[dr.Name] {
				t.Errorf("%s run: disk %s mode %s, want %s", name, dr.Name, dr.Mode, want[dr.Name])
			}
			if dr.RawSentBytes != sent[dr.Name] {
				t.Errorf("%s run: disk %s sent %d bytes, want %d (the bytes written)", name, dr.Name, dr.RawSentBytes, sent[dr.Name])
			}
			id := dataplane.DiskID(src.ServerID, dr.Name)
			if got, want := snapshotSHA(t, ls.s.Replica(), id, dr.SnapshotSeq), v.diskSHA(t, disks[dr.Name].i, disks[dr.Name].path); got != want {
				t.Fatalf("after the %s run the replica snapshot of %s (sha256 %s) differs from the disk (%s)", name, dr.Name, got, want)
			}
		}
	}
	run("first", map[string]Mode{"vda": ModeFull, "vdb": ModeFull}, map[string]int64{"vda": 12 << 20, "vdb": 2 << 20})
	v.write(t, 0, 4<<20, 1<<20)
	v.write(t, 0, 40<<20, 2<<20)
	v.write(t, 1, 8<<20, 512<<10)
	// The raw disk's bitmap is not persistent but lives as long as QEMU.
	incr := map[string]Mode{"vda": ModeIncremental, "vdb": ModeIncremental}
	run("second", incr, map[string]int64{"vda": 3 << 20, "vdb": 512 << 10})
	run("third (nothing written)", incr, map[string]int64{"vda": 0, "vdb": 0})

	// Under libvirt QEMU runs as another user: the work directory was
	// handed to it, and the run left nothing behind.
	left, err := os.ReadDir(src.WorkDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("work directory %s holds %v after the runs", src.WorkDir, left)
	}

	v.destroy()
	_, err = src.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), v.name) || !(strings.Contains(err.Error(), "no longer exists") || strings.Contains(err.Error(), "not running")) {
		t.Fatalf("run of a destroyed domain: %v, want an error saying the domain is gone", err)
	}
	t.Logf("run of a destroyed domain (as wanted): %v", err)
}

// A domain without disks is discovered but its run says it has none.
func TestConnectorLibvirtDomainWithoutDisks(t *testing.T) {
	requireLibvirt(t)
	dir := t.TempDir()
	reachable(t, dir)
	v := startDomain(t, dir)
	ls := startServer(t, filepath.Join(dir, "server"))
	d := LibvirtDomain{Name: v.name, UUID: v.uuid, dom: v.dom}
	src, err := OpenLibvirt(t.Context(), Options{ServerURL: "https://" + ls.s.APIAddr, InstallToken: ls.token, CAFingerprint: ls.s.CAFingerprint(),
		StateDir: filepath.Join(dir, "connector")}, v.h, d)
	if err != nil {
		t.Logf("open of a domain without disks (as wanted: an error, not a panic): %v", err)
		return
	}
	defer src.Close()
	if _, err := src.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "no disks") {
		t.Fatalf("run of a domain without disks: %v, want an error saying it has none", err)
	}
}

func TestLibvirtUnreachable(t *testing.T) {
	_, err := DialLibvirt(t.Context(), "qemu:///system?socket=/nonexistent/libvirt-sock")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/libvirt-sock") || !strings.Contains(err.Error(), "libvirtd") {
		t.Fatalf("DialLibvirt on a missing socket: %v, want an error naming the socket and libvirtd", err)
	}
	t.Logf("error (as wanted): %v", err)
}

func TestParseLibvirtURI(t *testing.T) {
	for _, c := range []struct{ uri, socket, bad string }{
		{uri: "qemu:///system", socket: DefaultLibvirtSocket},
		{uri: "qemu+unix:///system?socket=/run/x.sock", socket: "/run/x.sock"},
		{uri: "xen:///system", bad: "not QEMU"},
		{uri: "qemu+ssh://host/system", bad: "remote host"},
		{uri: "qemu:///session", bad: "session"},
		{uri: "qemu:///system?mode=direct", bad: "unknown parameter"},
		{uri: "::", bad: "libvirt URI"},
	} {
		driver, socket, err := ParseLibvirtURI(c.uri)
		if c.bad != "" {
			if err == nil || !strings.Contains(err.Error(), c.bad) {
				t.Errorf("ParseLibvirtURI(%q) = %v, want an error about %q", c.uri, err, c.bad)
			}
			continue
		}
		if err != nil || driver != "qemu:///system" || socket != c.socket {
			t.Errorf("ParseLibvirtURI(%q) = %q, %q, %v; want qemu:///system, %q", c.uri, driver, socket, err, c.socket)
		}
	}
}
