package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newTestCA returns a fresh CA in a temporary directory.
func newTestCA(t testing.TB) *CA {
	t.Helper()
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Certificate()
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA=%v BasicConstraintsValid=%v KeyUsage=%v", c.IsCA, c.BasicConstraintsValid, c.KeyUsage)
	}
	if !strings.HasPrefix(c.Subject.CommonName, "Ferry CA ") || len(c.Subject.CommonName) <= len("Ferry CA ") {
		t.Errorf("CA common name = %q, want \"Ferry CA <suffix>\"", c.Subject.CommonName)
	}
	if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("CA key type = %T, want ECDSA", c.PublicKey)
	}
	if got := c.NotAfter.Sub(c.NotBefore); got < 9*365*24*time.Hour || got > 11*365*24*time.Hour {
		t.Errorf("CA validity = %v, want about ten years", got)
	}
	for name, want := range map[string]os.FileMode{CAKeyFile: 0o600, CACertFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode = %#o, want %#o", name, fi.Mode().Perm(), want)
		}
	}
	if fp := ca.Fingerprint(); len(fp) != 64 || strings.ToLower(fp) != fp {
		t.Errorf("Fingerprint() = %q, want 64 lowercase hex digits", fp)
	}

	again, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Fingerprint() != ca.Fingerprint() {
		t.Errorf("reloaded CA fingerprint %s, want %s", again.Fingerprint(), ca.Fingerprint())
	}
	if !bytes.Equal(again.CertPEM(), ca.CertPEM()) {
		t.Error("reloaded CA PEM differs")
	}
	other, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if other.Fingerprint() == ca.Fingerprint() {
		t.Error("two new CAs have the same fingerprint")
	}
}

func TestLoadOrCreateCARefuses(t *testing.T) {
	tests := []struct {
		name    string
		mangle  func(t *testing.T, dir string)
		wantErr string
	}{
		{"group-readable key", func(t *testing.T, dir string) {
			chmod(t, filepath.Join(dir, CAKeyFile), 0o640)
		}, "has mode 0640"},
		{"world-readable key", func(t *testing.T, dir string) {
			chmod(t, filepath.Join(dir, CAKeyFile), 0o604)
		}, "chmod 600"},
		{"key without certificate", func(t *testing.T, dir string) {
			remove(t, filepath.Join(dir, CACertFile))
		}, "ca.key exists but"},
		{"certificate without key", func(t *testing.T, dir string) {
			remove(t, filepath.Join(dir, CAKeyFile))
		}, "ca.crt exists but"},
		{"key of another CA", func(t *testing.T, dir string) {
			otherDir := t.TempDir()
			if _, err := LoadOrCreateCA(otherDir); err != nil {
				t.Fatal(err)
			}
			copyFile(t, filepath.Join(otherDir, CAKeyFile), filepath.Join(dir, CAKeyFile))
		}, "does not match"},
		{"garbage certificate", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, CACertFile), "hello", 0o644)
		}, "no PEM block"},
		{"garbage key", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, CAKeyFile), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", 0o600)
		}, "load CA key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := LoadOrCreateCA(dir); err != nil {
				t.Fatal(err)
			}
			tt.mangle(t, dir)
			_, err := LoadOrCreateCA(dir)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("LoadOrCreateCA error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoadCARefusesNonCA(t *testing.T) {
	ca := newTestCA(t)
	keyPEM, csrPEM, err := NewKeyAndCSR("agent")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.SignAgentCSR(csrPEM, "s-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(certPEM, keyPEM); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("LoadCA(agent certificate) error = %v, want \"not a CA\"", err)
	}
}

func TestLoadCAAcceptsSEC1Key(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadCA(ca.CertPEM(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	if got.Fingerprint() != ca.Fingerprint() {
		t.Error("fingerprint changed")
	}
}

func TestLoadOrCreateServerCert(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	hosts := []string{"ferry.example.com", "10.0.0.5"}
	first, err := LoadOrCreateServerCert(dir, ca, hosts)
	if err != nil {
		t.Fatal(err)
	}
	leaf := first.Leaf
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "ferry.example.com", "10.0.0.5"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("server certificate does not cover %s: %v", h, err)
		}
	}
	if hn, err := os.Hostname(); err == nil && checkDNSName(strings.ToLower(hn)) == nil {
		if err := leaf.VerifyHostname(hn); err != nil {
			t.Errorf("server certificate does not cover host name %s: %v", hn, err)
		}
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.IsCA {
		t.Errorf("server certificate ExtKeyUsage=%v IsCA=%v, want serverAuth only, not CA", leaf.ExtKeyUsage, leaf.IsCA)
	}
	if len(first.Certificate) != 2 || !bytes.Equal(first.Certificate[1], ca.Certificate().Raw) {
		t.Errorf("server chain has %d certificates, want leaf then CA", len(first.Certificate))
	}
	if fi, err := os.Stat(filepath.Join(dir, ServerKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("server.key: %v, mode %v; want 0600", err, fi.Mode())
	}

	serial := func(c tls.Certificate) string { return c.Leaf.SerialNumber.String() }
	same, err := LoadOrCreateServerCert(dir, ca, hosts)
	if err != nil {
		t.Fatal(err)
	}
	if serial(same) != serial(first) {
		t.Error("server certificate was reissued though still good")
	}
	if len(same.Certificate) != 2 {
		t.Errorf("reloaded chain has %d certificates, want 2", len(same.Certificate))
	}

	moreHosts, err := LoadOrCreateServerCert(dir, ca, append(hosts, "replicator-2"))
	if err != nil {
		t.Fatal(err)
	}
	if serial(moreHosts) == serial(first) {
		t.Error("server certificate not reissued for a new host")
	}
	if err := moreHosts.Leaf.VerifyHostname("replicator-2"); err != nil {
		t.Error(err)
	}

	// Expiring within 30 days.
	ca.now = func() time.Time { return time.Now().Add(ServerCertValidity - 29*24*time.Hour) }
	renewed, err := LoadOrCreateServerCert(dir, ca, append(hosts, "replicator-2"))
	ca.now = nil
	if err != nil {
		t.Fatal(err)
	}
	if serial(renewed) == serial(moreHosts) {
		t.Error("server certificate not reissued when expiring within 30 days")
	}

	// Missing key.
	remove(t, filepath.Join(dir, ServerKeyFile))
	again, err := LoadOrCreateServerCert(dir, ca, hosts)
	if err != nil {
		t.Fatal(err)
	}
	if serial(again) == serial(renewed) {
		t.Error("server certificate not reissued when server.key is missing")
	}

	// Another CA.
	other := newTestCA(t)
	fromOther, err := LoadOrCreateServerCert(dir, other, hosts)
	if err != nil {
		t.Fatal(err)
	}
	if err := fromOther.Leaf.CheckSignatureFrom(other.Certificate()); err != nil {
		t.Errorf("server certificate not reissued for a new CA: %v", err)
	}

	if _, err := LoadOrCreateServerCert(dir, ca, []string{"https://bad host"}); err == nil {
		t.Error("LoadOrCreateServerCert accepted a URL as a host")
	}
}

func TestWriteFileAtomic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	write(t, path, "old", 0o644)
	if err := WriteFileAtomic(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "new" {
		t.Errorf("content = %q, want %q", got, "new")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %#o, want 0600", fi.Mode().Perm())
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory has %d entries, want 1 (temporary file left behind?)", len(entries))
	}
	if err := WriteFileAtomic(filepath.Join(t.TempDir(), "missing", "f"), nil, 0o600); err == nil {
		t.Error("WriteFileAtomic into a missing directory succeeded")
	}
}

func TestPublicKeysEqual(t *testing.T) {
	a, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if !publicKeysEqual(a.Public(), a.Public()) || publicKeysEqual(a.Public(), b.Public()) {
		t.Error("publicKeysEqual is wrong")
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func remove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
