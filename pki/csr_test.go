package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// makeCSR returns a PEM CSR for key built from tmpl.
func makeCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "agent"}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

var rsaKeys = struct {
	sync.Mutex
	m map[int]*rsa.PrivateKey
}{m: map[int]*rsa.PrivateKey{}}

func rsaKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	rsaKeys.Lock()
	defer rsaKeys.Unlock()
	if k := rsaKeys.m[bits]; k != nil {
		return k
	}
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	rsaKeys.m[bits] = k
	return k
}

func TestSignAgentCSRRefuses(t *testing.T) {
	ca := newTestCA(t)
	_, good, err := NewKeyAndCSR("agent")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(good)

	badSig := bytes.Clone(block.Bytes)
	badSig[len(badSig)-1] ^= 0xff
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hdr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: block.Bytes})
	big := append(bytes.Repeat([]byte(" "), MaxCSRSize), good...)

	tests := []struct {
		name    string
		csr     []byte
		wantErr string
	}{
		{"empty", nil, "pki: csr: empty"},
		{"white space", []byte(" \n\t"), "pki: csr: empty"},
		{"garbage", []byte("hello, world"), "pki: csr: not PEM"},
		{"DER not PEM", block.Bytes, "pki: csr: not PEM"},
		{"text before the block", append([]byte("junk\n"), good...), "pki: csr: not PEM"},
		{"truncated PEM", good[:len(good)/2], "pki: csr: malformed PEM"},
		{"two blocks", append(bytes.Clone(good), good...), "more than one PEM block"},
		{"trailing data", append(bytes.Clone(good), "trailing"...), "data after the PEM block"},
		{"wrong block type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes}), `PEM block is "CERTIFICATE"`},
		{"new certificate request type", pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: block.Bytes}), "want \"CERTIFICATE REQUEST\""},
		{"PEM headers", hdr, "headers are not allowed"},
		{"not a CSR inside", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x01}}), "pki: csr: parse"},
		{"bad signature", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: badSig}), "pki: csr: bad signature"},
		{"weak RSA 1024", makeCSR(t, rsaKey(t, 1024), nil), "RSA key of 1024 bits not allowed"},
		{"ECDSA P-224", makeCSR(t, p224, nil), "curve P-224 not allowed"},
		{"oversized", big, "over the 16384-byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, serial, err := ca.SignAgentCSR(tt.csr, "s-1", time.Hour)
			if err == nil {
				t.Fatalf("SignAgentCSR succeeded (serial %v, %d bytes), want error containing %q", serial, len(certPEM), tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("SignAgentCSR error = %q, want it to contain %q", err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "pki: csr: ") {
				t.Errorf("SignAgentCSR error = %q, want prefix \"pki: csr: \"", err)
			}
			if certPEM != nil || serial != nil {
				t.Error("SignAgentCSR returned a certificate with an error")
			}
		})
	}
}

func TestSignAgentCSRServerID(t *testing.T) {
	ca := newTestCA(t)
	_, csr, err := NewKeyAndCSR("agent")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "a/b", "a b", "..", "ü", strings.Repeat("x", MaxServerIDLen+1), "s-1?x"} {
		if _, _, err := ca.SignAgentCSR(csr, id, time.Hour); err == nil || !strings.HasPrefix(err.Error(), "pki: server id: ") {
			t.Errorf("SignAgentCSR(id %q) error = %v, want a \"pki: server id:\" error", id, err)
		}
	}
	if _, _, err := ca.SignAgentCSR(csr, "s-1", 0); err == nil {
		t.Error("SignAgentCSR accepted a zero validity")
	}
}

func TestSignAgentCSRIgnoresRequests(t *testing.T) {
	ca := newTestCA(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	basicCA, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	serverAuth, _ := asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 1}, {1, 3, 6, 1, 5, 5, 7, 3, 3}})
	keyUsage, _ := asn1.Marshal(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7}) // certSign, cRLSign
	other, _ := url.Parse("ferry://server/someone-else")
	greedy := makeCSR(t, key, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "admin", Organization: []string{"Ferry"}},
		DNSNames:       []string{"ferry.example.com", "localhost"},
		IPAddresses:    []net.IP{net.ParseIP("127.0.0.1")},
		EmailAddresses: []string{"root@example.com"},
		URIs:           []*url.URL{other},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: basicCA},
			{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Value: serverAuth},
			{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: keyUsage},
			{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: []byte{0x05, 0x00}},
		},
	})
	certPEM, serial, err := ca.SignAgentCSR(greedy, "srv-42", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := parseCertPEM(t, certPEM)

	if cert.SerialNumber.Cmp(serial) != 0 {
		t.Errorf("serial = %v, certificate has %v", serial, cert.SerialNumber)
	}
	if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v not a positive 128-bit number", cert.SerialNumber)
	}
	if cert.IsCA || !cert.BasicConstraintsValid {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v, want a valid non-CA basic constraint", cert.IsCA, cert.BasicConstraintsValid)
	}
	if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || len(cert.UnknownExtKeyUsage) != 0 {
		t.Errorf("ExtKeyUsage=%v Unknown=%v, want clientAuth only", cert.ExtKeyUsage, cert.UnknownExtKeyUsage)
	}
	if cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v, want digitalSignature only", cert.KeyUsage)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
		t.Errorf("certificate kept requested SANs: %v %v %v", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "ferry://server/srv-42" {
		t.Errorf("URIs = %v, want [ferry://server/srv-42]", cert.URIs)
	}
	if cert.Subject.CommonName != "srv-42" {
		t.Errorf("CommonName = %q, want srv-42", cert.Subject.CommonName)
	}
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(asn1.ObjectIdentifier{1, 2, 3, 4}) {
			t.Error("certificate kept an extension the CSR asked for")
		}
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Error("certificate is not for the CSR's key")
	}
	if err := cert.CheckSignatureFrom(ca.Certificate()); err != nil {
		t.Error(err)
	}
	id, err := ServerIDFromCert(cert)
	if err != nil || id != "srv-42" {
		t.Errorf("ServerIDFromCert = %q, %v; want srv-42", id, err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("agent certificate verifies for serverAuth")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("agent certificate does not verify for clientAuth: %v", err)
	}
	if d := time.Until(cert.NotAfter); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("certificate expires in %v, want about 24h", d)
	}
}

func TestSignAgentCSRKeyTypes(t *testing.T) {
	ca := newTestCA(t)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	_, p256CSR, err := NewKeyAndCSR("agent")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		csr  []byte
	}{
		{"ECDSA P-256 from NewKeyAndCSR", p256CSR},
		{"ECDSA P-384", makeCSR(t, p384, nil)},
		{"Ed25519", makeCSR(t, ed, nil)},
		{"RSA 2048", makeCSR(t, rsaKey(t, 2048), nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, _, err := ca.SignAgentCSR(tt.csr, "s-1", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			parseCertPEM(t, certPEM)
		})
	}
}

func TestSignAgentCSRClampsToCA(t *testing.T) {
	ca := newTestCA(t)
	_, csr, _ := NewKeyAndCSR("agent")
	certPEM, _, err := ca.SignAgentCSR(csr, "s-1", 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if cert := parseCertPEM(t, certPEM); cert.NotAfter.After(ca.Certificate().NotAfter) {
		t.Errorf("agent certificate outlives the CA: %v > %v", cert.NotAfter, ca.Certificate().NotAfter)
	}
}

func TestServerIDFromCert(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name    string
		uris    []*url.URL
		want    string
		wantErr string
	}{
		{"one", []*url.URL{u("ferry://server/abc")}, "abc", ""},
		{"other schemes ignored", []*url.URL{u("https://x/y"), u("ferry://server/abc")}, "abc", ""},
		{"none", nil, "", "not a Ferry agent certificate"},
		{"two", []*url.URL{u("ferry://server/a"), u("ferry://server/b")}, "", "want exactly one"},
		{"wrong host", []*url.URL{u("ferry://agent/a")}, "", "malformed URI"},
		{"query", []*url.URL{u("ferry://server/a?x=1")}, "", "malformed URI"},
		{"nested path", []*url.URL{u("ferry://server/a/b")}, "", "not allowed"},
		{"empty id", []*url.URL{u("ferry://server/")}, "", "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ServerIDFromCert(&x509.Certificate{URIs: tt.uris})
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("ServerIDFromCert = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ServerIDFromCert = %q, %v; want error containing %q", got, err, tt.wantErr)
			}
		})
	}
	if _, err := ServerIDFromCert(nil); err == nil {
		t.Error("ServerIDFromCert(nil) succeeded")
	}
}

func TestNewKeyAndCSR(t *testing.T) {
	keyPEM, csrPEM, err := NewKeyAndCSR("host-1")
	if err != nil {
		t.Fatal(err)
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	if csr.Subject.CommonName != "host-1" {
		t.Errorf("CommonName = %q, want host-1", csr.Subject.CommonName)
	}
	if !publicKeysEqual(key.Public(), csr.PublicKey) {
		t.Error("CSR is not for the returned key")
	}
}

func parseCertPEM(t testing.TB, certPEM []byte) *x509.Certificate {
	t.Helper()
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func encodeCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
