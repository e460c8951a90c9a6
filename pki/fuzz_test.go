package pki

import (
	"crypto/x509"
	"testing"
	"time"
)

// FuzzSignAgentCSR feeds arbitrary bytes to SignAgentCSR: it must never
// panic, and whatever it signs must be a client-only agent certificate.
// The seed corpus is in testdata/fuzz/FuzzSignAgentCSR.
func FuzzSignAgentCSR(f *testing.F) {
	ca, err := LoadOrCreateCA(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, csrPEM []byte) {
		certPEM, serial, err := ca.SignAgentCSR(csrPEM, "fuzz-1", time.Hour)
		if err != nil {
			if certPEM != nil || serial != nil {
				t.Fatal("error with a certificate")
			}
			return
		}
		cert, err := ParseCertificatePEM(certPEM)
		if err != nil {
			t.Fatal(err)
		}
		if cert.IsCA || len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
			t.Fatalf("signed a certificate with IsCA=%v ExtKeyUsage=%v", cert.IsCA, cert.ExtKeyUsage)
		}
		if id, err := ServerIDFromCert(cert); err != nil || id != "fuzz-1" {
			t.Fatalf("ServerIDFromCert = %q, %v", id, err)
		}
	})
}
