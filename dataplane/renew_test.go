package dataplane_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/pki"
)

// An agent whose certificate is near its end renews it over its session;
// the server accepts the old certificate until the agent has connected
// with the new one, then refuses it. Replication goes on throughout.
func TestAgentRenewsCertificate(t *testing.T) {
	h := newHarness(t)
	h.stop()
	h.serveWith(func(dp *dataplane.Server) { dp.AgentCertValidity = 48 * time.Hour })
	ctx := t.Context()

	// A certificate of 20 minutes: with the CA's hour of clock skew
	// before it, less than a third of its life is left at once.
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("agent")
	if err != nil {
		t.Fatal(err)
	}
	oldPEM, oldSerial, err := h.ca.SignAgentCSR(csrPEM, "s-1", 20*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error { s.AgentCertSerial = oldSerial.String(); return nil }); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	sj, _ := json.Marshal(agent.State{SourceServerID: "s-1", DataPlaneAddress: h.addr, MachineID: "m"})
	for name, data := range map[string][]byte{"agent.key": keyPEM, "agent.crt": oldPEM, "ca.crt": h.ca.CertPEM(), "state.json": sj} {
		if err := os.WriteFile(filepath.Join(state, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	oldPair, err := tls.X509KeyPair(oldPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	oldConf, err := pki.ClientTLSConfigWithCA(h.ca.CertPEM(), &oldPair)
	if err != nil {
		t.Fatal(err)
	}
	img := make([]byte, 1<<20)
	rand.Read(img)
	dev := filepath.Join(t.TempDir(), "vda")
	if err := os.WriteFile(dev, img, 0o600); err != nil {
		t.Fatal(err)
	}

	// The agent dials with its state directory's identity (Dial nil).
	run := func() (context.CancelFunc, chan error) {
		actx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- agent.Replicate(actx, agent.Options{StateDir: state, Devices: []string{dev}, Logger: h.dp.Logger})
		}()
		return stop, done
	}
	stop, done := run()
	var renewed *x509.Certificate
	eventually(t, 30*time.Second, "the agent's certificate renewed", func() bool {
		renewed = leafOf(t, filepath.Join(state, "agent.crt"))
		return renewed != nil && renewed.SerialNumber.Cmp(oldSerial) != 0
	})
	if left := time.Until(renewed.NotAfter); left < 47*time.Hour {
		t.Errorf("renewed certificate valid for %v more, want the server's 48 h", left)
	}
	srv, err := h.st.Server(ctx, "s-1")
	if err != nil {
		t.Fatal(err)
	}
	if srv.AgentCertSerial != renewed.SerialNumber.String() || srv.AgentCertPrevSerial != oldSerial.String() {
		t.Fatalf("server record has serials %q and %q, want the new %s and the old %s", srv.AgentCertSerial, srv.AgentCertPrevSerial, renewed.SerialNumber, oldSerial)
	}
	for _, f := range []string{"agent.key.next", "agent.crt.next"} {
		if _, err := os.Stat(filepath.Join(state, f)); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", f, err)
		}
	}
	// Until the agent connects with the new certificate, the old one
	// still works: an agent stopped before saving it is not locked out.
	if err := dataplane.TryConnect(h.addr, oldConf); err != nil {
		t.Fatalf("old certificate refused before the agent used the new one: %v", err)
	}
	eventually(t, 30*time.Second, "the initial sync", func() bool { return h.replicaEquals(dataplane.DiskID("s-1", "vda"), img) })

	// The restarted agent connects with the new certificate, which
	// retires the old one.
	stop()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v", err)
	}
	stop, done = run()
	defer func() {
		stop()
		<-done
	}()
	eventually(t, 30*time.Second, "the old serial retired", func() bool {
		s, err := h.st.Server(ctx, "s-1")
		return err == nil && s.AgentCertPrevSerial == "" && s.AgentCertSerial == renewed.SerialNumber.String()
	})
	if err := dataplane.TryConnect(h.addr, oldConf); err == nil {
		t.Fatal("the old certificate was accepted after the agent connected with the renewed one")
	}
	// Still replicating with the renewed certificate.
	eventually(t, 30*time.Second, "replication with the renewed certificate", func() bool {
		s, err := h.st.Server(ctx, "s-1")
		return err == nil && s.Replication.State == ferry.ReplicationContinuous
	})
}

// leafOf reads the certificate at path, nil when it cannot.
func leafOf(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	c, _ := pki.ParseCertificatePEM(b)
	return c
}
