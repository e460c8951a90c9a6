package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ServerCertValidity is the validity LoadOrCreateServerCert gives the server
// certificates it issues.
const ServerCertValidity = 365 * 24 * time.Hour

// ServerCertRenewBefore is how long before expiry LoadOrCreateServerCert
// replaces a server certificate.
const ServerCertRenewBefore = 30 * 24 * time.Hour

// IssueServerCert issues a TLS server certificate (extended key usage
// serverAuth only) with a new ECDSA P-256 key, valid for validity (but never
// past the CA's own expiry). Its subject alternative names are localhost,
// 127.0.0.1, ::1, this machine's host name and every entry of hosts, each an
// IP address (optionally in brackets) or a DNS name. The returned
// certificate's chain holds the leaf and then the CA certificate, so that an
// agent pinning the CA's fingerprint finds the CA in the handshake.
func (ca *CA) IssueServerCert(hosts []string, validity time.Duration) (tls.Certificate, error) {
	if validity <= 0 {
		return tls.Certificate{}, fmt.Errorf("pki: issue server certificate: validity %v is not positive", validity)
	}
	names, err := serverNames(hosts)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: issue server certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: issue server certificate: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: issue server certificate: %w", err)
	}
	now := ca.time()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Ferry"}, CommonName: names.commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              ca.notAfter(now, validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              names.dns,
		IPAddresses:           names.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: issue server certificate: sign: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: issue server certificate: %w", err)
	}
	return tls.Certificate{
		Certificate: [][]byte{der, ca.cert.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

type sanList struct {
	commonName string
	dns        []string
	ips        []net.IP
	all        []string // every name, as VerifyHostname takes it
}

// serverNames returns the default names plus hosts, normalised and
// deduplicated. The common name is the first of hosts, or localhost.
func serverNames(hosts []string) (sanList, error) {
	defaults := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && checkDNSName(strings.ToLower(h)) == nil {
		defaults = append(defaults, h) // an odd host name is left out, not an error
	}
	list := sanList{commonName: "localhost"}
	seen := map[string]bool{}
	for i, h := range append(defaults, hosts...) {
		name, ip, err := normaliseHost(h)
		if err != nil {
			return sanList{}, err
		}
		if i == len(defaults) {
			list.commonName = name
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		list.all = append(list.all, name)
		if ip != nil {
			list.ips = append(list.ips, ip)
		} else {
			list.dns = append(list.dns, name)
		}
	}
	return list, nil
}

// normaliseHost turns an IP address (optionally in brackets) or a DNS name
// into the form certificates carry.
func normaliseHost(h string) (string, net.IP, error) {
	h = strings.TrimSpace(h)
	if len(h) > 2 && h[0] == '[' && h[len(h)-1] == ']' {
		h = h[1 : len(h)-1]
	}
	if ip := net.ParseIP(h); ip != nil {
		return ip.String(), ip, nil
	}
	name := strings.ToLower(strings.TrimSuffix(h, "."))
	if err := checkDNSName(name); err != nil {
		return "", nil, fmt.Errorf("host %q: %w", h, err)
	}
	return name, nil, nil
}

// checkDNSName accepts host names made of letters, digits, hyphens and
// underscores in dot-separated labels. Wildcards are not accepted.
func checkDNSName(name string) error {
	if name == "" {
		return errors.New("empty host name")
	}
	if len(name) > 253 {
		return errors.New("host name longer than 253 characters")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return errors.New("empty label in host name")
		}
		if len(label) > 63 {
			return errors.New("host name label longer than 63 characters")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("character %q not allowed in a host name (want an IP address or a DNS name, without port or scheme)", r)
			}
		}
	}
	return nil
}

// LoadOrCreateServerCert returns the server certificate kept in dir as
// server.crt (0644) and server.key (0600), issuing and saving a new one with
// IssueServerCert (valid ServerCertValidity) when the files are missing or
// unreadable, when the key is readable by others than its owner, when the
// certificate was not issued by ca, expires within ServerCertRenewBefore, or
// does not cover localhost, this machine's host name and every entry of hosts.
// The returned chain is the leaf followed by the CA certificate.
func LoadOrCreateServerCert(dir string, ca *CA, hosts []string) (tls.Certificate, error) {
	names, err := serverNames(hosts)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: server certificate: %w", err)
	}
	certPath := filepath.Join(dir, ServerCertFile)
	keyPath := filepath.Join(dir, ServerKeyFile)
	if cert, ok := loadServerCert(certPath, keyPath, ca, names); ok {
		return cert, nil
	}
	cert, err := ca.IssueServerCert(hosts, ServerCertValidity)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: server certificate: encode key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: server certificate: %w", err)
	}
	if err := WriteFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: server certificate: %w", err)
	}
	// A crash between the two writes leaves a key that does not match the
	// certificate; the next call notices and issues again.
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	if err := WriteFileAtomic(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: server certificate: %w", err)
	}
	return cert, nil
}

// loadServerCert loads the saved server certificate and reports whether it
// is usable as is.
func loadServerCert(certPath, keyPath string, ca *CA, names sanList) (tls.Certificate, bool) {
	if checkPrivateMode(keyPath) != nil {
		return tls.Certificate{}, false
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return tls.Certificate{}, false
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return tls.Certificate{}, false
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, false
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return tls.Certificate{}, false
		}
	}
	if leaf.CheckSignatureFrom(ca.cert) != nil {
		return tls.Certificate{}, false
	}
	now := ca.time()
	if now.Before(leaf.NotBefore) || now.Add(ServerCertRenewBefore).After(leaf.NotAfter) {
		return tls.Certificate{}, false
	}
	if !hasExtKeyUsage(leaf, x509.ExtKeyUsageServerAuth) {
		return tls.Certificate{}, false
	}
	for _, n := range names.all {
		if leaf.VerifyHostname(n) != nil {
			return tls.Certificate{}, false
		}
	}
	return tls.Certificate{
		Certificate: [][]byte{leaf.Raw, ca.cert.Raw},
		PrivateKey:  pair.PrivateKey,
		Leaf:        leaf,
	}, true
}

func hasExtKeyUsage(cert *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range cert.ExtKeyUsage {
		if u == want {
			return true
		}
	}
	return false
}
