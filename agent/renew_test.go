package agent

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/protocol"
)

// testPair is a key and a certificate the test CA issued for it.
type testPair struct{ key, cert []byte }

func issue(t *testing.T, ca *pki.CA, validity time.Duration) testPair {
	t.Helper()
	key, csr, err := pki.NewKeyAndCSR("agent")
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := ca.SignAgentCSR(csr, "s-1", validity)
	if err != nil {
		t.Fatal(err)
	}
	return testPair{key, cert}
}

// TestFinishRenewal covers each point a crash can interrupt a renewal at:
// what the state directory holds then, and the pair DataPlaneTLS loads.
func TestFinishRenewal(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	old, renewed, stray := issue(t, ca, time.Hour), issue(t, ca, 48*time.Hour), issue(t, ca, time.Hour)
	for _, tt := range []struct {
		name  string
		files map[string][]byte
		want  testPair // the pair loaded afterwards
		gone  []string // files that must not be left
		kept  []string // files that must be left
	}{
		{"no renewal", map[string][]byte{keyFile: old.key, certFile: old.cert}, old, []string{nextCertFile}, nil},
		{"key sent, no answer", map[string][]byte{keyFile: old.key, certFile: old.cert, nextKeyFile: renewed.key}, old, []string{nextCertFile}, []string{nextKeyFile}},
		{"answer saved, nothing renamed", map[string][]byte{keyFile: old.key, certFile: old.cert, nextKeyFile: renewed.key, nextCertFile: renewed.cert},
			renewed, []string{nextKeyFile, nextCertFile}, nil},
		{"key renamed, certificate not", map[string][]byte{keyFile: renewed.key, certFile: old.cert, nextCertFile: renewed.cert},
			renewed, []string{nextKeyFile, nextCertFile}, nil},
		{"answer saved, a newer request's key beside it", map[string][]byte{keyFile: renewed.key, certFile: old.cert, nextKeyFile: stray.key, nextCertFile: renewed.cert},
			renewed, []string{nextCertFile}, []string{nextKeyFile}},
		{"a certificate for no key held", map[string][]byte{keyFile: old.key, certFile: old.cert, nextCertFile: stray.cert},
			old, []string{nextCertFile}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.files[caFile] = ca.CertPEM()
			for name, data := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			conf, err := DataPlaneTLS(dir)
			if err != nil {
				t.Fatalf("DataPlaneTLS: %v", err)
			}
			cc, err := conf.GetClientCertificate(&tls.CertificateRequestInfo{})
			if err != nil {
				t.Fatal(err)
			}
			got := cc.Certificate[0]
			want, err := pki.ParseCertificatePEM(tt.want.cert)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want.Raw) {
				t.Error("loaded the wrong certificate")
			}
			for _, f := range tt.gone {
				if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
					t.Errorf("%s left: %v", f, err)
				}
			}
			for _, f := range tt.kept {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Errorf("%s removed: %v", f, err)
				}
			}
		})
	}
}

func TestRenewerDue(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// 47 hours after an hour of clock skew: a life of 48 hours, renewed
	// in its last 16.
	p := issue(t, ca, 47*time.Hour)
	for name, data := range map[string][]byte{keyFile: p.key, certFile: p.cert, caFile: ca.CertPEM()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r := NewRenewer(dir)
	now := time.Now()
	for _, tt := range []struct {
		at   time.Duration
		want bool
	}{{0, false}, {30 * time.Hour, false}, {32 * time.Hour, true}, {50 * time.Hour, true}} {
		if got := r.Due(now.Add(tt.at)); got != tt.want {
			t.Errorf("due %v from now: %v, want %v", tt.at, got, tt.want)
		}
	}
	at := now.Add(40 * time.Hour)
	m, err := r.Request(at)
	if err != nil {
		t.Fatal(err)
	}
	if r.Due(at.Add(renewRetry / 2)) {
		t.Error("due again while a request is in flight")
	}
	if !r.Due(at.Add(renewRetry)) {
		t.Error("not due again once the request went unanswered for renewRetry")
	}
	if _, err := r.Answer(&protocol.Renewed{Refusal: "no"}); err == nil {
		t.Error("a refusal installed nothing but reported no error")
	}
	// An answer for another key, or from another CA, is refused.
	if _, err := r.Answer(&protocol.Renewed{Certificate: string(p.cert)}); err == nil {
		t.Error("a certificate for another key was installed")
	}
	other, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	forged, _, err := other.SignAgentCSR([]byte(m.CSR), "s-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Answer(&protocol.Renewed{Certificate: string(forged)}); err == nil {
		t.Error("a certificate from another CA was installed")
	}
	good, _, err := ca.SignAgentCSR([]byte(m.CSR), "s-1", 47*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Answer(&protocol.Renewed{Certificate: string(good)}); err != nil {
		t.Fatalf("the CA's certificate for the new key: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, certFile)); err != nil || string(got) != string(good) {
		t.Fatalf("certificate not installed: %v", err)
	}
	if _, err := DataPlaneTLS(dir); err != nil {
		t.Fatalf("renewed identity does not load: %v", err)
	}
}
