package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/replica/backend"
	"github.com/ferrymigrate/ferry/replica/backendtest"
)

// testServer returns the S3 endpoint and credentials the tests use: the
// ones in FERRY_TEST_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY, or a
// versitygw started here when the binary is installed. Without either the
// test skips, unless FERRY_TEST_REQUIRE_ALL=1 makes that a failure.
func testServer(t *testing.T) Config {
	t.Helper()
	if ep := os.Getenv("FERRY_TEST_S3_ENDPOINT"); ep != "" {
		return Config{Endpoint: ep, AccessKey: os.Getenv("FERRY_TEST_S3_ACCESS_KEY"), SecretKey: os.Getenv("FERRY_TEST_S3_SECRET_KEY"), Insecure: true, Region: "us-east-1"}
	}
	serverOnce.Do(startVersity)
	if serverErr != nil {
		msg := fmt.Sprintf("no S3 server: set FERRY_TEST_S3_ENDPOINT or install versitygw (go install github.com/versity/versitygw/cmd/versitygw@latest): %v", serverErr)
		if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return serverCfg
}

var (
	serverOnce sync.Once
	serverCfg  Config
	serverErr  error
	serverCmd  *exec.Cmd
)

func findVersity() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = string(bytes.TrimSpace(out))
		}
	}
	p := filepath.Join(gopath, "bin", "versitygw")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("versitygw not in PATH or %s", p)
	}
	return p, nil
}

func startVersity() {
	bin, err := findVersity()
	if err != nil {
		serverErr = err
		return
	}
	dir, err := os.MkdirTemp("", "ferry-versitygw-")
	if err != nil {
		serverErr = err
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		serverErr = err
		return
	}
	addr := l.Addr().String()
	l.Close()
	const access, secret = "ferrytest", "ferrytestsecret"
	cmd := exec.Command(bin, "--access", access, "--secret", secret, "--port", addr, "posix", dir)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		serverErr = fmt.Errorf("start versitygw: %w", err)
		return
	}
	serverCmd = cmd
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			serverCfg = Config{Endpoint: addr, AccessKey: access, SecretKey: secret, Insecure: true, Region: "us-east-1"}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	serverErr = fmt.Errorf("versitygw did not listen on %s", addr)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if serverCmd != nil {
		serverCmd.Process.Kill()
		serverCmd.Wait()
	}
	os.Exit(code)
}

func randName() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newBackend(t *testing.T) *Backend {
	t.Helper()
	cfg := testServer(t)
	cfg.Bucket = "ferry-test"
	cfg.CreateBucket = true
	cfg.Prefix = "t-" + randName() + "/"
	b, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return newBackend(t) })
}

func TestMissingBucket(t *testing.T) {
	cfg := testServer(t)
	cfg.Bucket = "absent-" + randName()
	if _, err := Open(context.Background(), cfg); err == nil {
		t.Error("Open of a missing bucket without CreateBucket succeeded")
	}
}

// TestStoreOnS3 runs the replica store end to end on S3.
func TestStoreOnS3(t *testing.T) {
	ctx := context.Background()
	be := newBackend(t)
	dir := t.TempDir()
	keys, err := replica.CreateKeyFile(filepath.Join(dir, "key"))
	if err != nil {
		t.Fatal(err)
	}
	opts := replica.Options{Dir: filepath.Join(dir, "staging"), Backend: be, Keys: keys, ChunkSize: 64 << 10, FoldInterval: -1}
	s, err := replica.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.CreateDisk(ctx, "vm1-sda", 1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	rand.Read(want[:300<<10])
	for i := 0; i < 4; i++ {
		if err := d.Write(ctx, uint64(i+1), int64(i)*(100<<10), want[i*(100<<10):(i+1)*(100<<10)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Barrier(ctx, 5, replica.AppConsistent); err != nil {
		t.Fatal(err)
	}
	snap, err := d.Snapshot(ctx, replica.SnapshotOptions{Consistency: replica.AppConsistent})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = replica.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err = s.Disk("vm1-sda")
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.OpenSnapshot(ctx, snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make([]byte, r.Size())
	if _, err := r.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("snapshot read back from S3 differs")
	}
	rep, err := s.Verify(ctx)
	if err != nil || !rep.OK() {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
}
