package controlplane

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/pki"
)

func (e *env) installToken(req api.CreateInstallTokenRequest) *api.CreatedInstallToken {
	e.t.Helper()
	if req.ExpiresInSeconds == 0 {
		req.ExpiresInSeconds = 3600
	}
	if req.Name == "" {
		req.Name = "rollout"
	}
	it, err := e.client(ferry.RoleAdmin).CreateInstallToken(context.Background(), &req)
	if err != nil {
		e.t.Fatal(err)
	}
	return it
}

func pairRequest(t *testing.T, token, machineID string) *api.PairRequest {
	t.Helper()
	_, csr, err := pki.NewKeyAndCSR("web-1")
	if err != nil {
		t.Fatal(err)
	}
	return &api.PairRequest{
		InstallToken: token, MachineID: machineID, Hostname: "web-1", OS: "Debian GNU/Linux 12",
		Kernel: "6.1.0", CPUs: 4, RAMBytes: 8 << 30, AgentVersion: "test",
		NICs:  []ferry.NIC{{Name: "eth0", MAC: "52:54:00:12:34:56", IPs: []string{"10.0.0.5/24"}}},
		Disks: []api.PairDisk{{Name: "sda", SizeBytes: 20 << 30, LogicalBlockSize: 512, Model: "QEMU HARDDISK"}},
		CSR:   string(csr),
	}
}

func TestPairCreatesThenUpdates(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	a := &ferry.Application{ID: "app-1", Name: "shop", CreatedAt: e.now, UpdatedAt: e.now}
	if err := e.store.CreateApplication(ctx, a); err != nil {
		t.Fatal(err)
	}
	it := e.installToken(api.CreateInstallTokenRequest{MaxUses: 2, ApplicationID: "app-1", Tags: map[string]string{"env": "prod"}})
	pub := e.client("")

	resp, err := pub.Pair(ctx, pairRequest(t, it.Secret, "machine-a"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.DataPlaneAddress != "ferry.test:1500" || !strings.Contains(resp.CACertificate, "BEGIN CERTIFICATE") {
		t.Fatalf("pair response %+v", resp)
	}
	cert, err := parseCert(resp.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := pki.ServerIDFromCert(cert); err != nil || id != resp.SourceServerID {
		t.Fatalf("certificate names %q (%v), want %s", id, err, resp.SourceServerID)
	}
	srv, err := e.client(ferry.RoleViewer).Server(ctx, resp.SourceServerID)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Hostname != "web-1" || srv.CPUs != 4 || srv.Lifecycle != ferry.LifecycleNotReady ||
		srv.Replication.State != ferry.ReplicationStopped || len(srv.Disks) != 1 || srv.Disks[0].SizeBytes != 20<<30 ||
		srv.ApplicationID != "app-1" || srv.Tags["env"] != "prod" || srv.LaunchSetup.Target != "qemu" {
		t.Fatalf("paired server %+v", srv)
	}

	// The same machine again: same server, new facts, never a duplicate.
	req := pairRequest(t, it.Secret, "machine-a")
	req.CPUs = 8
	resp2, err := pub.Pair(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp2.SourceServerID != resp.SourceServerID {
		t.Fatalf("re-pair made server %s, want %s", resp2.SourceServerID, resp.SourceServerID)
	}
	all, _, err := e.store.ListServers(ctx, ferry.ServerFilter{})
	if err != nil || len(all) != 1 || all[0].CPUs != 8 {
		t.Fatalf("servers after re-pair: %v %v", all, err)
	}
	// The first certificate no longer matches the server's serial.
	cert2, _ := parseCert(resp2.Certificate)
	if cert2.SerialNumber.String() != all[0].AgentCertSerial || cert.SerialNumber.String() == all[0].AgentCertSerial {
		t.Fatal("re-pairing did not replace the certificate serial")
	}

	// Two uses spent: a third is refused and changes nothing.
	_, err = pub.Pair(ctx, pairRequest(t, it.Secret, "machine-b"))
	wantAPIError(t, err, http.StatusUnauthorized, "used up")
	if all, _, _ := e.store.ListServers(ctx, ferry.ServerFilter{}); len(all) != 1 {
		t.Fatalf("refused pairing created a server: %d servers", len(all))
	}
}

func TestPairRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	pub := e.client("")
	good := e.installToken(api.CreateInstallTokenRequest{})

	expired := e.installToken(api.CreateInstallTokenRequest{ExpiresInSeconds: 60})
	revoked := e.installToken(api.CreateInstallTokenRequest{})
	if err := e.client(ferry.RoleAdmin).RevokeInstallToken(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mutate func(*api.PairRequest)
		clock  time.Duration
		status int
		want   string
	}{
		{"no token", func(r *api.PairRequest) { r.InstallToken = "" }, 0, 401, "install token"},
		{"API token instead", func(r *api.PairRequest) { r.InstallToken = e.tokens[ferry.RoleAdmin] }, 0, 401, "install token"},
		{"wrong secret", func(r *api.PairRequest) { r.InstallToken = good.Secret[:len(good.Secret)-2] + "zz" }, 0, 401, "not valid"},
		{"unknown id", func(r *api.PairRequest) { r.InstallToken = "fyi_aaaaaaaaaaaaaaaa_bbbbbbbb" }, 0, 401, "not valid"},
		{"expired", func(r *api.PairRequest) { r.InstallToken = expired.Secret }, 2 * time.Minute, 401, "expired"},
		{"revoked", func(r *api.PairRequest) { r.InstallToken = revoked.Secret }, 0, 401, "revoked"},
		{"garbage csr", func(r *api.PairRequest) { r.CSR = "not a csr" }, 0, 400, "csr"},
		{"no csr", func(r *api.PairRequest) { r.CSR = "" }, 0, 400, "csr"},
		{"bad machine id", func(r *api.PairRequest) { r.MachineID = "../../etc" }, 0, 400, "machine_id"},
		{"no hostname", func(r *api.PairRequest) { r.Hostname = "" }, 0, 400, "hostname"},
		{"bad block size", func(r *api.PairRequest) { r.Disks[0].LogicalBlockSize = 3 }, 0, 400, "logical_block_size"},
		{"duplicate disk", func(r *api.PairRequest) { r.Disks = append(r.Disks, r.Disks[0]) }, 0, 400, "twice"},
		{"negative size", func(r *api.PairRequest) { r.Disks[0].SizeBytes = -1 }, 0, 400, "size_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := e.now
			e.now = start.Add(tt.clock)
			defer func() { e.now = start }()
			req := pairRequest(t, good.Secret, "machine-x")
			tt.mutate(req)
			_, err := pub.Pair(ctx, req)
			wantAPIError(t, err, tt.status, tt.want)
			got, err := e.store.InstallToken(ctx, good.ID)
			if err != nil || got.Uses != 0 {
				t.Fatalf("good token uses = %d (%v), want 0: a refused pairing counted a use", got.Uses, err)
			}
			if all, _, _ := e.store.ListServers(ctx, ferry.ServerFilter{}); len(all) != 0 {
				t.Fatal("a refused pairing created a server")
			}
		})
	}
}

func wantAPIError(t *testing.T, err error, status int, contains string) {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("err = %v, want an API error %d", err, status)
	}
	if ae.Status != status || !strings.Contains(strings.ToLower(ae.Message), strings.ToLower(contains)) {
		t.Fatalf("err = %d %s %q, want %d containing %q", ae.Status, ae.Code, ae.Message, status, contains)
	}
}
