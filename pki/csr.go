package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"time"
)

// MaxCSRSize is the largest PEM-encoded CSR SignAgentCSR accepts.
const MaxCSRSize = 16 << 10

// MaxServerIDLen is the longest server id SignAgentCSR accepts.
const MaxServerIDLen = 128

// AgentURIScheme and AgentURIHost make the URI SAN of an agent certificate:
// ferry://server/<serverID>.
const (
	AgentURIScheme = "ferry"
	AgentURIHost   = "server"
)

const (
	minRSABits = 2048
	maxRSABits = 8192
)

// NewKeyAndCSR generates a new ECDSA P-256 key for an agent and a
// certificate signing request for it with the given common name (typically
// the machine's host name; the CA replaces it). It returns the key as a PKCS
// #8 "PRIVATE KEY" PEM block, to be saved with mode 0600, and the CSR as a
// "CERTIFICATE REQUEST" PEM block.
func NewKeyAndCSR(commonName string) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: new CSR: generate key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: commonName},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: new CSR: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: new CSR: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}),
		nil
}

// SignAgentCSR signs an agent's certificate signing request and returns the
// PEM-encoded certificate and its serial number, which the caller records so
// that the certificate can be revoked (see CA.IsRevoked).
//
// The CSR must be at most MaxCSRSize bytes holding exactly one "CERTIFICATE
// REQUEST" PEM block and nothing else but white space; its signature must
// verify; and its key must be ECDSA P-256 or P-384, Ed25519, or RSA of 2048
// to 8192 bits. Only the CSR's public key is used: its subject, requested
// names and extensions are ignored. The certificate has common name serverID,
// the single URI SAN ferry://server/<serverID>, extended key usage clientAuth
// only, is not a CA, has a random 128-bit serial number and is valid for
// validity (never past the CA's own expiry). serverID must be 1 to
// MaxServerIDLen letters, digits, '-', '_' or '.'.
//
// Every refusal is an error starting "pki: csr:" (or "pki: server id:"), safe
// to show to the agent.
func (ca *CA) SignAgentCSR(csrPEM []byte, serverID string, validity time.Duration) (certPEM []byte, serial *big.Int, err error) {
	if err := checkServerID(serverID); err != nil {
		return nil, nil, err
	}
	if validity <= 0 {
		return nil, nil, fmt.Errorf("pki: sign agent certificate: validity %v is not positive", validity)
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, nil, err
	}
	serial, err = randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("pki: sign agent certificate: %w", err)
	}
	now := ca.time()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Ferry agent"}, CommonName: serverID},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              ca.notAfter(now, validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{agentURI(serverID)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: sign agent certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), serial, nil
}

// parseCSR parses and checks a PEM CSR strictly; see SignAgentCSR.
func parseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) > MaxCSRSize {
		return nil, fmt.Errorf("pki: csr: %d bytes is over the %d-byte limit", len(data), MaxCSRSize)
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("pki: csr: empty")
	}
	if !bytes.HasPrefix(trimmed, []byte("-----BEGIN ")) {
		return nil, errors.New("pki: csr: not PEM (want a single \"-----BEGIN CERTIFICATE REQUEST-----\" block)")
	}
	block, rest := pem.Decode(trimmed)
	if block == nil {
		return nil, errors.New("pki: csr: malformed PEM block")
	}
	if block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("pki: csr: PEM block is %q, want \"CERTIFICATE REQUEST\"", block.Type)
	}
	if len(block.Headers) != 0 {
		return nil, errors.New("pki: csr: PEM headers are not allowed")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		if next, _ := pem.Decode(rest); next != nil {
			return nil, errors.New("pki: csr: more than one PEM block; want exactly one CERTIFICATE REQUEST")
		}
		return nil, errors.New("pki: csr: data after the PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: csr: parse: %w", err)
	}
	if err := checkAgentKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: csr: bad signature: %w", err)
	}
	return csr, nil
}

// checkAgentKey allows ECDSA P-256 and P-384, Ed25519 and RSA 2048–8192 bits.
func checkAgentKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return nil
		}
		return fmt.Errorf("pki: csr: ECDSA curve %s not allowed; use P-256 or P-384", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("pki: csr: RSA key of %d bits not allowed; want %d to %d bits", n, minRSABits, maxRSABits)
		}
		return nil
	default:
		return fmt.Errorf("pki: csr: key type %T not allowed; use ECDSA P-256/P-384, Ed25519 or RSA ≥ %d bits", pub, minRSABits)
	}
}

// checkServerID allows ids that fit in a URI path segment unescaped.
func checkServerID(id string) error {
	if id == "" {
		return errors.New("pki: server id: empty")
	}
	if len(id) > MaxServerIDLen {
		return fmt.Errorf("pki: server id: %d characters, at most %d allowed", len(id), MaxServerIDLen)
	}
	if id == "." || id == ".." {
		return fmt.Errorf("pki: server id: %q not allowed", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("pki: server id: character %q not allowed in %q (letters, digits, '-', '_', '.')", r, id)
		}
	}
	return nil
}

func agentURI(serverID string) *url.URL {
	return &url.URL{Scheme: AgentURIScheme, Host: AgentURIHost, Path: "/" + serverID}
}

// ServerIDFromCert returns the source server id an agent certificate names in
// its URI SAN ferry://server/<serverID>. It is an error if the certificate has
// no such URI, more than one, or an invalid id. It does not verify the
// certificate; the TLS handshake does that.
func ServerIDFromCert(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", errors.New("pki: server id from certificate: no certificate")
	}
	var ids []string
	for _, u := range cert.URIs {
		if u.Scheme != AgentURIScheme {
			continue
		}
		if u.Host != AgentURIHost || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			return "", fmt.Errorf("pki: server id from certificate: malformed URI %q; want %s://%s/<id>", u, AgentURIScheme, AgentURIHost)
		}
		ids = append(ids, strings.TrimPrefix(u.Path, "/"))
	}
	switch len(ids) {
	case 0:
		return "", fmt.Errorf("pki: server id from certificate %q: no %s://%s/ URI; not a Ferry agent certificate", cert.Subject, AgentURIScheme, AgentURIHost)
	case 1:
	default:
		return "", fmt.Errorf("pki: server id from certificate %q: %d %s:// URIs; want exactly one", cert.Subject, len(ids), AgentURIScheme)
	}
	if err := checkServerID(ids[0]); err != nil {
		return "", fmt.Errorf("pki: server id from certificate: %w", err)
	}
	return ids[0], nil
}
