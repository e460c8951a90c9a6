package server_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/controlplane"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/server"
)

// running is a `ferry server --dev` started in this process.
type running struct {
	*server.Server
	stop func()
}

func start(t *testing.T, data string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.Start(ctx, config.Server{Dev: true, DataDir: data, Listen: "127.0.0.1:0", DataListen: "127.0.0.1:0"},
		slog.New(slog.NewTextHandler(io.Discard, nil)), io.Discard)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	r := &running{Server: srv}
	stopped := false
	r.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	t.Cleanup(r.stop)
	return r
}

// TestUsageSurvivesRestart replicates a disk with a real agent, stops the
// whole server (control plane and replication server) and starts it again
// on the same data: the usage report still has the bytes the agent sent
// and the time it replicated.
func TestUsageSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	srv := start(t, data)
	ctx := t.Context()

	admin, err := controlplane.CreateToken(ctx, srv.Store(), "admin", ferry.RoleAdmin, time.Now().UTC(), 0)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := pki.ParseFingerprint(srv.CAFingerprint())
	if err != nil {
		t.Fatal(err)
	}
	cl, err := api.NewClient("https://"+srv.APIAddr, admin.Secret, pki.ClientTLSConfig(pin, nil))
	if err != nil {
		t.Fatal(err)
	}
	it, err := cl.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{Name: "usage", ExpiresInSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk0")
	img := make([]byte, 8<<20)
	rand.Read(img[:4<<20]) // incompressible: about 4 MiB cross the network
	if err := os.WriteFile(disk, img, 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "agent")
	paired, err := agent.PairFacts(ctx, agent.PairOptions{ServerURL: "https://" + srv.APIAddr, InstallToken: it.Secret, CAFingerprint: srv.CAFingerprint(), StateDir: state},
		&agent.Facts{MachineID: "m-usage", Hostname: "usage-1", CPUs: 1, Disks: []api.PairDisk{{Name: "disk0", SizeBytes: int64(len(img)), LogicalBlockSize: 512}}})
	if err != nil {
		t.Fatal(err)
	}
	conf, err := agent.DataPlaneTLS(state)
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAgent := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- agent.Replicate(actx, agent.Options{StateDir: state, Devices: []string{disk}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Dial: func(ctx context.Context) (net.Conn, error) {
				d := tls.Dialer{Config: conf}
				return d.DialContext(ctx, "tcp", srv.DataAddr)
			}})
	}()
	id := paired.SourceServerID
	usage := func(s *running) api.ServerUsage {
		t.Helper()
		rep, err := s.ControlPlane().UsageReport(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range rep.Servers {
			if u.SourceServerID == id {
				return u
			}
		}
		t.Fatalf("server %s not in the usage report", id)
		return api.ServerUsage{}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		s, err := srv.Store().Server(ctx, id)
		if err == nil && s.Lifecycle == ferry.LifecycleReadyForTest && s.SentBytes() >= 4<<20 && s.Replication.ReplicatingSeconds > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no READY_FOR_TEST with sent bytes and replicating time within a minute: %+v, %v", s, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopAgent()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	before := usage(srv)
	if before.BytesSent < 4<<20 || before.BytesSent > 4<<20+64<<10 || before.DaysReplicated <= 0 || before.LogicalBytes < 4<<20 {
		t.Fatalf("usage before the restart: %+v", before)
	}
	srv.stop()

	srv = start(t, data)
	after := usage(srv)
	if after.BytesSent != before.BytesSent || after.DaysReplicated != before.DaysReplicated || after.LogicalBytes != before.LogicalBytes {
		t.Fatalf("usage after the restart %+v, before %+v", after, before)
	}
	if got := srv.DataPlane().Traffic(id).ReceivedBytes; got != 0 {
		t.Fatalf("the new process's own counter is %d, want 0: the report must not depend on it", got)
	}
}
