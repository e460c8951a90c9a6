package cli

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/server"
)

// TestStoreVerbs writes a real replica, snapshots it, and drives the
// offline store verbs over it: verify, usage, snapshots list, export
// (checked with qemu-img compare), then verify again after corrupting an
// object.
func TestStoreVerbs(t *testing.T) {
	ctx := t.Context()
	data := t.TempDir()
	s, err := server.OpenReplica(ctx, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.CreateDisk(ctx, "s-1.sda", 8<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	img := make([]byte, 8<<20)
	rand.Read(img[1<<20 : 3<<20])
	copy(img[5<<20:], bytes.Repeat([]byte("ferry "), 1000))
	if err := d.Write(ctx, 1, 0, img[:4<<20]); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, 2, 4<<20, img[4<<20:]); err != nil {
		t.Fatal(err)
	}
	if err := d.Barrier(ctx, 3, replica.CrashConsistent); err != nil {
		t.Fatal(err)
	}
	snap, err := d.Snapshot(ctx, replica.SnapshotOptions{Consistency: replica.CrashConsistent})
	if err != nil {
		t.Fatal(err)
	}

	// The store is held: the offline verbs say who holds it.
	err = RunStoreVerify(ctx, StoreOptions{DataDir: data, Output: FormatTable}, &bytes.Buffer{})
	if !errors.Is(err, replica.ErrLocked) || !strings.Contains(err.Error(), "ferry server") {
		t.Fatalf("verify while held: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	o := StoreOptions{DataDir: data, Output: FormatTable}
	var out bytes.Buffer
	if err := RunStoreVerify(ctx, o, &out); err != nil || !strings.Contains(out.String(), "No problems") {
		t.Fatalf("verify: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := RunStoreUsage(ctx, o, &out); err != nil || !strings.Contains(out.String(), "s-1.sda") {
		t.Fatalf("usage: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := RunSnapshotsList(ctx, StoreOptions{DataDir: data, Output: FormatJSON}, "", &out); err != nil {
		t.Fatal(err)
	}
	var snaps []replica.SnapshotInfo
	if err := json.Unmarshal(out.Bytes(), &snaps); err != nil || len(snaps) != 1 || snaps[0].ID != snap.ID {
		t.Fatalf("snapshots list: %v %s", err, out.String())
	}

	if _, err := exec.LookPath("qemu-img"); err != nil {
		if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
			t.Fatal("qemu-img is missing")
		}
		t.Skip("SKIPPED export check: qemu-img is not installed")
	}
	raw := filepath.Join(t.TempDir(), "want.raw")
	if err := os.WriteFile(raw, img, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"qcow2", "raw", "vmdk"} {
		dst := filepath.Join(t.TempDir(), "out."+format)
		err := RunSnapshotsExport(ctx, ExportOptions{StoreOptions: o, Disk: "s-1.sda", Snapshot: snap.ID, Format: format, OutputFile: dst}, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("export %s: %v", format, err)
		}
		if cmp, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", format, raw, dst).CombinedOutput(); err != nil {
			t.Fatalf("export %s differs from the source: %v %s", format, err, cmp)
		}
	}
	if err := RunSnapshotsExport(ctx, ExportOptions{StoreOptions: o, Disk: "s-1.sda", Snapshot: snap.ID, Format: "vhdx", OutputFile: filepath.Join(t.TempDir(), "x")}, &bytes.Buffer{}); err == nil {
		t.Fatal("export to an unknown format succeeded")
	}

	// Corrupt the first chunk of a pack: verify names the chunk and the
	// pack, and fails.
	var victim string
	filepath.WalkDir(filepath.Join(data, "replica/objects"), func(p string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() && strings.HasSuffix(p, ".pack") && victim == "" {
			victim = p
		}
		return nil
	})
	if victim == "" {
		t.Fatal("no pack of chunks found to corrupt")
	}
	b, _ := os.ReadFile(victim)
	b[8+16] ^= 0xff // inside the first object, after the pack's 8-byte header
	if err := os.WriteFile(victim, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	err = RunStoreVerify(ctx, o, &out)
	if !errors.Is(err, ErrVerifyFailed) || !strings.Contains(out.String(), filepath.Base(victim)) {
		t.Fatalf("verify after corruption: %v\n%s", err, out.String())
	}
}
