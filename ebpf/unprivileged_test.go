package ebpf

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/track/tracktest"
)

// TestUnprivileged runs itself again as nobody (setpriv): there New must
// fail with ErrUnsupported, and Auto must fall back to rescan.
func TestUnprivileged(t *testing.T) {
	if dev := os.Getenv("FERRY_TEST_UNPRIVILEGED_DEV"); dev != "" {
		unprivileged(t, dev)
		return
	}
	tracktest.RequireRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("SKIPPED: no setpriv to drop privileges")
	}
	dev := tracktest.Loop(t, 16<<20, false)
	if err := os.Chmod(dev, 0o644); err != nil { // nobody may read it
		t.Fatal(err)
	}
	// The test binary lives in a directory only root can enter: copy it.
	dir, err := os.MkdirTemp("", "ferry-ebpf-test")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "ebpf.test")
	copyFile(t, os.Args[0], bin)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
		bin, "-test.run=^TestUnprivileged$", "-test.v")
	cmd.Env = append(os.Environ(), "FERRY_TEST_UNPRIVILEGED_DEV="+dev)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
	t.Logf("as nobody:\n%s", out)
}

func unprivileged(t *testing.T, dev string) {
	_, err := New([]string{dev})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("New as nobody = %v, want an error wrapping ErrUnsupported", err)
	}
	t.Logf("New: %v", err)
	tr, err := Auto([]string{dev}, 50*time.Millisecond)
	if err != nil {
		t.Fatalf("Auto: %v", err)
	}
	defer tr.Close()
	if tr.Kind() != "rescan" {
		t.Fatalf("Auto as nobody chose %q, want rescan", tr.Kind())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	batches, err := tr.Next(ctx)
	if err != nil || len(batches) != 1 || !batches[0].Lost {
		t.Fatalf("rescan baseline = %v, %v; want one Lost batch", batches, err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
