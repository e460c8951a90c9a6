package nbd

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"
)

// testTLSConfigs returns a server config with a fresh self-signed
// certificate and a client config that trusts it.
func testTLSConfigs(t *testing.T) (*tls.Config, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ferry-nbd-test"},
		DNSNames:     []string{"ferry-nbd-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS13,
	}
	client := &tls.Config{RootCAs: pool, ServerName: "ferry-nbd-test", MinVersion: tls.VersionTLS13}
	return server, client
}

func TestStartTLS(t *testing.T) {
	exports, data := testExports(t)
	serverTLS, clientTLS := testTLSConfigs(t)
	sock := startServer(t, exports, func(s *Server) { s.TLSConfig = serverTLS })

	t.Run("required", func(t *testing.T) {
		c := dial(t, sock)
		for _, opt := range []uint32{optGo, optInfo, optList, optStructuredReply} {
			c.sendOption(opt, exportRequestData("disk"))
			if r := c.mustOptionReply(); r.typ != repErrTLSReqd {
				t.Fatalf("option %d before STARTTLS: reply %#x, want NBD_REP_ERR_TLS_REQD", opt, r.typ)
			}
		}
		c.sendOption(optExportName, []byte("disk"))
		c.expectClosed()
	})
	t.Run("upgrade", func(t *testing.T) {
		c := dial(t, sock)
		c.sendOption(optStructuredReply, nil) // refused, and reset by TLS anyway
		c.mustOptionReply()
		c.sendOption(optStartTLS, nil)
		if r := c.mustOptionReply(); r.typ != repAck {
			t.Fatalf("STARTTLS reply %#x", r.typ)
		}
		tc := tls.Client(c.nc, clientTLS)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
		c.nc, c.br = tc, bufio.NewReader(tc)
		c.sendOption(optStartTLS, nil)
		if r := c.mustOptionReply(); r.typ != repErrInvalid {
			t.Fatalf("second STARTTLS reply %#x, want NBD_REP_ERR_INVALID", r.typ)
		}
		c.negotiate("disk", true, false)
		c.request(cmdRead, 0, 1, 100, 5000, nil)
		if r := c.readReply(); r.errno != 0 || !bytes.Equal(r.data, data[100:5100]) {
			t.Fatalf("read over TLS: errno %d", r.errno)
		}
	})
}
