package dataplane

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/sqlite"
)

// newServerParts returns a metadata store, a CA and a server certificate
// for 127.0.0.1, all in a temporary directory.
func newServerParts(t *testing.T) (*sqlite.Store, *pki.CA, tls.Certificate) {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServerCert([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return st, ca, cert
}

func TestDataPlaneChecksCertificateAgainstStore(t *testing.T) {
	st, ca, cert := newServerParts(t)
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("agent")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, serial, err := ca.SignAgentCSR(csrPEM, "s-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agentCert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	srv := &ferry.SourceServer{ID: "s-1", MachineID: "m", Hostname: "h", Lifecycle: ferry.LifecycleNotReady,
		AgentCertSerial: serial.String(),
		Replication:     ferry.ReplicationInfo{State: ferry.ReplicationStopped, Steps: []ferry.InitiationStepState{{Step: ferry.StepConnectAgentToReplicationServer, Status: ferry.StepNotStarted}}}}
	if err := st.CreateServer(ctx, srv); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	dp := &Server{Store: st, CA: ca, Cert: cert}
	go func() { done <- dp.Serve(sctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()

	clientConf, err := pki.ClientTLSConfigWithCA(ca.CertPEM(), &agentCert)
	if err != nil {
		t.Fatal(err)
	}
	connect := func(conf *tls.Config) error { return tryConnect(ln.Addr().String(), conf) }
	if err := connect(clientConf); err != nil {
		t.Fatalf("paired agent refused: %v", err)
	}
	waitFor(t, func() bool {
		s, _ := st.Server(ctx, "s-1")
		return !s.LastSeenAt.IsZero() && s.Replication.Steps[0].Status == ferry.StepSucceeded
	})

	noCert, _ := pki.ClientTLSConfigWithCA(ca.CertPEM(), nil)
	if err := connect(noCert); err == nil {
		t.Fatal("a client without a certificate was accepted")
	}
	// Re-paired elsewhere: this serial is no longer the server's.
	if _, err := st.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error { s.AgentCertSerial = "12345"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := connect(clientConf); err == nil {
		t.Fatal("a superseded certificate was accepted")
	}
	// Disconnected: refused even with the right serial.
	if _, err := st.UpdateServer(ctx, "s-1", func(s *ferry.SourceServer) error {
		s.AgentCertSerial = serial.String()
		s.Lifecycle = ferry.LifecycleDisconnected
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := connect(clientConf); err == nil {
		t.Fatal("a disconnected server's certificate was accepted")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// failingListener fails its first fails Accepts as a process out of file
// descriptors does, then accepts from the real listener.
type failingListener struct {
	net.Listener
	fails    atomic.Int32
	accepted atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// TestServeSurvivesAcceptErrors checks that running out of descriptors
// does not end the data plane (and with it the server), and that a
// listener closed under Serve still does.
func TestServeSurvivesAcceptErrors(t *testing.T) {
	st, ca, cert := newServerParts(t)
	real, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &failingListener{Listener: real}
	ln.fails.Store(6)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	dp := &Server{Store: st, CA: ca, Cert: cert}
	go func() { done <- dp.Serve(ctx, ln) }()
	c, err := net.Dial("tcp", real.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for ln.accepted.Load() == 0 {
		select {
		case err := <-done:
			t.Fatalf("Serve ended after accept errors: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the connection was not accepted within 10 s of the accept errors")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A listener closed by someone else ends Serve with an error (once
	// its connections are done).
	c.Close()
	real.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve after its listener closed: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not end after its listener closed")
	}
}

// tryConnect reports whether the data plane at addr keeps a connection
// made with conf (TLS 1.3 delivers a refusal as an alert on the first
// read).
func tryConnect(addr string, conf *tls.Config) error {
	c, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var b [1]byte
	_, err = c.Read(b[:])
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return nil
	}
	return err
}
