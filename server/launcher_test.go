package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/launch"
	"github.com/ferrymigrate/ferry/nbd"
	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/replica/fs"
)

// TestLauncherReleasesSnapshots checks against a real replica store that
// a launch that fails, and an instance once terminated, leave no snapshot
// reader open and no instance files behind.
func TestLauncherReleasesSnapshots(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("SKIP: qemu-img is not installed")
	}
	dir := t.TempDir()
	keys, err := replica.OpenKeyFile(filepath.Join(dir, "replica.key"))
	if err != nil {
		t.Fatal(err)
	}
	be, err := fs.Open(filepath.Join(dir, "objects"), fs.Packed(replica.ChunkPrefix))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	rs, err := replica.Open(ctx, replica.Options{Dir: filepath.Join(dir, "staging"), Backend: be, Keys: keys, CloseBackend: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	const srvID = "s-0123456789abcdef"
	d, err := rs.CreateDisk(ctx, dataplane.DiskID(srvID, "vda"), 4<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, 1, 0, bytes.Repeat([]byte("ferry"), 4096)); err != nil {
		t.Fatal(err)
	}
	snap, err := d.Snapshot(ctx, replica.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(dir, "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	data := filepath.Join(dir, "data")
	l := newLauncher(ctx, rs, data, sock, filepath.Join(dir, "no-such-qemu"), log)
	defer l.close()
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- (&nbd.Server{Lookup: l.lookup, Logger: log}).Serve(sctx, ln) }()
	defer func() { stop(); <-served }()

	server := func(target string, snaps map[string]string) *ferry.SourceServer {
		ls := ferry.DefaultLaunchSettings()
		ls.Target, ls.Convert, ls.RightSizing, ls.MemoryMiB = target, false, ferry.RightSizingNone, 128
		return &ferry.SourceServer{ID: srvID, Disks: []ferry.Disk{{Name: "vda", SizeBytes: 4 << 20}}, LaunchSetup: ls}
	}
	logf := func(ferry.JobEvent, string, ...any) {}
	for _, tc := range []struct {
		name, target string
		snaps        map[string]string
		want         string
	}{
		{"qemu binary missing", "qemu", map[string]string{"vda": snap.ID}, "no-such-qemu not found"},
		{"unknown snapshot", "qemu", map[string]string{"vda": "00000000000000ff"}, "00000000000000ff"},
		{"no snapshot of a disk", "qemu", map[string]string{}, "no snapshot for disk vda"},
		{"unknown target", "nope", map[string]string{"vda": snap.ID}, `unknown launch target "nope"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := server(tc.target, tc.snaps)
			_, err := l.Launch(ctx, srv, tc.snaps, ferry.InitiatedByStartTest, "j-1", l.InstanceID(srv, ferry.InitiatedByStartTest), logf)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Launch = %v, want an error containing %q", err, tc.want)
			}
			if n := l.openReaders(); n != 0 {
				t.Errorf("%d snapshot reader(s) open after a failed launch", n)
			}
			entries, _ := os.ReadDir(filepath.Join(data, "instances"))
			if len(entries) != 0 {
				t.Errorf("instance files left: %v", entries)
			}
		})
	}

	// The export target launches without QEMU: a success holds the
	// snapshot until Terminate.
	snaps := map[string]string{"vda": snap.ID}
	srv := server("export", snaps)
	iid := l.InstanceID(srv, ferry.InitiatedByStartTest)
	inst, err := l.Launch(ctx, srv, snaps, ferry.InitiatedByStartTest, "j-2", iid, logf)
	if err != nil {
		t.Fatal(err)
	}
	if inst.ID != iid {
		t.Errorf("instance %s launched, want the ID chosen before the launch, %s", inst.ID, iid)
	}
	if n := l.openReaders(); n != 1 {
		t.Errorf("%d snapshot readers open while an instance uses one, want 1", n)
	}
	if err := l.Terminate(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if n := l.openReaders(); n != 0 {
		t.Errorf("%d snapshot reader(s) open after Terminate", n)
	}
	if err := l.Terminate(ctx, inst); err != nil && !errors.Is(err, launch.ErrNotFound) {
		t.Fatalf("second Terminate: %v", err)
	}
}
