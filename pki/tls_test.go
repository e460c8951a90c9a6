package pki

import (
	"crypto/tls"
	"encoding/hex"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// testServer is a TLS listener on loopback that answers "ok" after each
// successful handshake and reports each handshake's outcome.
type testServer struct {
	addr    string
	results chan serverResult
}

type serverResult struct {
	err      error
	serverID string
	resumed  bool
}

func startServer(t *testing.T, cfg *tls.Config) *testServer {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{addr: ln.Addr().String(), results: make(chan serverResult, 16)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := c.(*tls.Conn)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				var r serverResult
				if r.err = tc.Handshake(); r.err == nil {
					cs := tc.ConnectionState()
					r.resumed = cs.DidResume
					if len(cs.PeerCertificates) > 0 {
						r.serverID, _ = ServerIDFromCert(cs.PeerCertificates[0])
					}
					tc.Write([]byte("ok"))
				}
				s.results <- r
			}()
		}
	}()
	return s
}

// dial connects with cfg, reads the server's "ok" and returns the client's
// error (handshake or read: with TLS 1.3 a client learns that the server
// refused its certificate only when it reads) and the server's result.
func (s *testServer) dial(t *testing.T, cfg *tls.Config) (server serverResult, clientErr error) {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", s.addr, cfg)
	if err == nil {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2)
		_, err = io.ReadFull(conn, buf)
		if err == nil && string(buf) != "ok" {
			t.Fatalf("server said %q", buf)
		}
		conn.Close()
	}
	select {
	case server = <-s.results:
	case <-time.After(10 * time.Second):
		t.Fatal("server reported nothing")
	}
	return server, err
}

func mustPin(t *testing.T, ca *CA) []byte {
	t.Helper()
	pin, err := ParseFingerprint(ca.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	return pin
}

func agentCert(t *testing.T, ca *CA, serverID string) (tls.Certificate, *big.Int) {
	t.Helper()
	keyPEM, csrPEM, err := NewKeyAndCSR("agent")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, serial, err := ca.SignAgentCSR(csrPEM, serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert, serial
}

func TestDataPlaneHandshake(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	serverCert, err := ca.IssueServerCert(nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	revoked := map[string]bool{}
	ca.IsRevoked = func(serial *big.Int, serverID string) bool {
		mu.Lock()
		defer mu.Unlock()
		return revoked[serial.String()]
	}
	srv := startServer(t, ca.ServerTLSConfig(serverCert, true))
	pin := mustPin(t, ca)

	good, _ := agentCert(t, ca, "srv-good")
	revokedCert, revokedSerial := agentCert(t, ca, "srv-revoked")
	revoked[revokedSerial.String()] = true
	foreign, _ := agentCert(t, other, "srv-good")
	// A server certificate of the right CA has serverAuth only.
	wrongUsage, err := ca.IssueServerCert(nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tls12 := ClientTLSConfig(pin, &good)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	tests := []struct {
		name          string
		cfg           *tls.Config
		wantServerErr string // "" means the connection must succeed
	}{
		{"agent certificate from the CA", ClientTLSConfig(pin, &good), ""},
		{"no client certificate", ClientTLSConfig(pin, nil), "didn't provide a certificate"},
		{"certificate from another CA", ClientTLSConfig(pin, &foreign), "unknown authority"},
		{"revoked serial", ClientTLSConfig(pin, &revokedCert), "is revoked"},
		{"server certificate as client certificate", ClientTLSConfig(pin, &wrongUsage), "incompatible key usage"},
		{"TLS 1.2 client", tls12, "unsupported versions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, clientErr := srv.dial(t, tt.cfg)
			if tt.wantServerErr == "" {
				if clientErr != nil || res.err != nil {
					t.Fatalf("client error %v, server error %v; want success", clientErr, res.err)
				}
				if res.serverID != "srv-good" {
					t.Errorf("server saw server id %q, want srv-good", res.serverID)
				}
				return
			}
			if clientErr == nil {
				t.Error("client connected, want refusal")
			}
			if res.err == nil || !strings.Contains(res.err.Error(), tt.wantServerErr) {
				t.Errorf("server error = %v, want it to contain %q", res.err, tt.wantServerErr)
			}
		})
	}
}

// TestRevokedResumption checks that a certificate revoked after a first
// handshake is refused even when the client resumes its TLS session.
func TestRevokedResumption(t *testing.T) {
	ca := newTestCA(t)
	serverCert, err := ca.IssueServerCert(nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	revoked := false
	ca.IsRevoked = func(*big.Int, string) bool { mu.Lock(); defer mu.Unlock(); return revoked }
	srv := startServer(t, ca.ServerTLSConfig(serverCert, true))
	cert, _ := agentCert(t, ca, "srv-1")
	cfg := ClientTLSConfig(mustPin(t, ca), &cert)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	if res, clientErr := srv.dial(t, cfg); clientErr != nil || res.err != nil {
		t.Fatalf("first connection: client %v, server %v", clientErr, res.err)
	}
	res, clientErr := srv.dial(t, cfg)
	if clientErr != nil || res.err != nil {
		t.Fatalf("second connection: client %v, server %v", clientErr, res.err)
	}
	if !res.resumed {
		t.Skip("session was not resumed; cannot test revocation on resumption")
	}
	mu.Lock()
	revoked = true
	mu.Unlock()
	res, clientErr = srv.dial(t, cfg)
	if clientErr == nil || res.err == nil || !strings.Contains(res.err.Error(), "is revoked") {
		t.Fatalf("resumed connection after revocation: client %v, server %v; want refusal", clientErr, res.err)
	}
}

func TestClientPinning(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	serverCert, err := ca.IssueServerCert([]string{"ferry.example.com"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherServerCert, err := other.IssueServerCert(nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leafOnly := serverCert
	leafOnly.Certificate = leafOnly.Certificate[:1]

	api := startServer(t, ca.ServerTLSConfig(serverCert, false))
	impostor := startServer(t, other.ServerTLSConfig(otherServerCert, false))
	noCAInChain := startServer(t, ca.ServerTLSConfig(leafOnly, false))

	pin := mustPin(t, ca)
	wrongPin := append([]byte(nil), pin...)
	wrongPin[0] ^= 1
	leafPin := mustPin(t, &CA{cert: serverCert.Leaf})
	caPEMCfg, err := ClientTLSConfigWithCA(ca.CertPEM(), nil)
	if err != nil {
		t.Fatal(err)
	}
	otherPEMCfg, err := ClientTLSConfigWithCA(other.CertPEM(), nil)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name          string
		srv           *testServer
		cfg           *tls.Config
		wantClientErr string // "" means success
	}{
		{"right pin", api, ClientTLSConfig(pin, nil), ""},
		{"right pin, server name not in certificate", api, withServerName(ClientTLSConfig(pin, nil), "elsewhere.example.net"), ""},
		{"wrong pin", api, ClientTLSConfig(wrongPin, nil), "no CA with the pinned fingerprint"},
		{"pin of the leaf, not the CA", api, ClientTLSConfig(leafPin, nil), "no CA with the pinned fingerprint"},
		{"short pin", api, ClientTLSConfig(pin[:16], nil), "is 16 bytes, want 32"},
		{"server from another CA", impostor, ClientTLSConfig(pin, nil), "no CA with the pinned fingerprint"},
		{"server that does not send the CA", noCAInChain, ClientTLSConfig(pin, nil), "no CA with the pinned fingerprint"},
		{"saved CA", api, caPEMCfg, ""},
		{"saved CA, server that does not send the CA", noCAInChain, caPEMCfg, ""},
		{"saved CA, server from another CA", impostor, caPEMCfg, "does not verify against the Ferry CA"},
		{"other saved CA", api, otherPEMCfg, "does not verify against the Ferry CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, clientErr := tt.srv.dial(t, tt.cfg)
			if tt.wantClientErr == "" {
				if clientErr != nil || res.err != nil {
					t.Fatalf("client error %v, server error %v; want success", clientErr, res.err)
				}
				return
			}
			if clientErr == nil || !strings.Contains(clientErr.Error(), tt.wantClientErr) {
				t.Fatalf("client error = %v, want it to contain %q", clientErr, tt.wantClientErr)
			}
		})
	}
}

// TestImpostorWithPinnedCACert checks that a server that sends the genuine CA
// certificate in its chain but a leaf signed by another CA is refused.
func TestImpostorWithPinnedCACert(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	forged, err := other.IssueServerCert(nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	forged.Certificate = [][]byte{forged.Certificate[0], ca.Certificate().Raw}
	srv := startServer(t, other.ServerTLSConfig(forged, false))
	_, clientErr := srv.dial(t, ClientTLSConfig(mustPin(t, ca), nil))
	if clientErr == nil || !strings.Contains(clientErr.Error(), "does not verify") {
		t.Fatalf("client error = %v, want a verification failure", clientErr)
	}
}

func TestClientTLSConfigWithCARefuses(t *testing.T) {
	ca := newTestCA(t)
	cert, _ := agentCert(t, ca, "s-1")
	agentPEM := encodeCertPEM(cert.Certificate[0])
	for name, in := range map[string][]byte{
		"garbage":        []byte("hello"),
		"two blocks":     append(ca.CertPEM(), ca.CertPEM()...),
		"not a CA":       agentPEM,
		"hex not pem":    []byte(hex.EncodeToString(ca.Certificate().Raw)),
		"empty":          nil,
		"private key":    []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
		"truncated cert": ca.CertPEM()[:100],
	} {
		if _, err := ClientTLSConfigWithCA(in, nil); err == nil {
			t.Errorf("%s: ClientTLSConfigWithCA succeeded", name)
		}
	}
}

func TestTLSConfigsAreTLS13Only(t *testing.T) {
	ca := newTestCA(t)
	sc, err := ca.IssueServerCert(nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	withCA, err := ClientTLSConfigWithCA(ca.CertPEM(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]*tls.Config{
		"server data plane": ca.ServerTLSConfig(sc, true),
		"server API":        ca.ServerTLSConfig(sc, false),
		"client pinned":     ClientTLSConfig(mustPin(t, ca), nil),
		"client with CA":    withCA,
	} {
		if cfg.MinVersion != tls.VersionTLS13 {
			t.Errorf("%s: MinVersion = %#x, want TLS 1.3", name, cfg.MinVersion)
		}
	}
	if cfg := ca.ServerTLSConfig(sc, true); cfg.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("data plane ClientAuth = %v, want RequireAndVerifyClientCert", cfg.ClientAuth)
	}
}

func withServerName(cfg *tls.Config, name string) *tls.Config {
	cfg.ServerName = name
	return cfg
}
