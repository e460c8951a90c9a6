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
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// File names LoadOrCreateCA and LoadOrCreateServerCert use inside their directory.
const (
	CAKeyFile      = "ca.key"
	CACertFile     = "ca.crt"
	ServerKeyFile  = "server.key"
	ServerCertFile = "server.crt"
)

// CAValidity is how long a CA created by LoadOrCreateCA is valid.
const CAValidity = 10 * 365 * 24 * time.Hour

// clockSkew is how far into the past NotBefore is set on every certificate,
// so that a peer whose clock is a little behind still accepts it.
const clockSkew = time.Hour

// CA is Ferry's certificate authority: a CA certificate and its private key.
// Create one with LoadOrCreateCA or LoadCA. Its methods may be called
// concurrently; IsRevoked must be set, if at all, before ServerTLSConfig.
type CA struct {
	// IsRevoked, if not nil, is asked on every data-plane handshake by the
	// configurations ServerTLSConfig returns, with the serial number of the
	// agent's certificate and the server id it names. Returning true refuses
	// the connection. It must be safe for concurrent use and fast (it runs
	// inside the handshake); a typical implementation reads an in-memory set
	// kept up to date from the metadata store.
	IsRevoked func(serial *big.Int, serverID string) bool

	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	now     func() time.Time // for tests; nil means time.Now
}

// Certificate returns the CA certificate. The caller must not modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM returns the CA certificate PEM-encoded, as agents save it after pairing.
func (ca *CA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// Fingerprint returns the SHA-256 fingerprint of the CA certificate's DER
// encoding as lowercase hex: the value an operator passes to
// `ferry agent --ca-fingerprint`.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.cert) }

// Pool returns a new certificate pool holding only the CA certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func (ca *CA) time() time.Time {
	if ca.now != nil {
		return ca.now()
	}
	return time.Now()
}

// LoadOrCreateCA returns the CA kept in dir as ca.crt and ca.key. If neither
// file exists it creates dir (0700) if needed and a new ECDSA P-256 CA named
// "Ferry CA <random suffix>", valid for ten years, and writes ca.key (0600)
// first and ca.crt (0644) second, each with WriteFileAtomic. If both exist it
// loads them and checks that the key matches the certificate and that ca.key
// is readable by its owner only. Any other state (only one of the two files,
// a group- or world-readable key, files that do not parse) is an error that
// says what to do; LoadOrCreateCA never overwrites an existing file.
func LoadOrCreateCA(dir string) (*CA, error) {
	keyPath := filepath.Join(dir, CAKeyFile)
	certPath := filepath.Join(dir, CACertFile)
	keyExists, err := exists(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	certExists, err := exists(certPath)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	switch {
	case keyExists && certExists:
		return loadCAFiles(certPath, keyPath)
	case keyExists:
		return nil, fmt.Errorf("pki: load CA: %s exists but %s does not; restore %s from a backup, or, if this data directory has never paired an agent, remove %s to create a new CA",
			keyPath, certPath, CACertFile, keyPath)
	case certExists:
		return nil, fmt.Errorf("pki: load CA: %s exists but %s does not; restore the CA key from a backup (a new CA would orphan every paired agent)",
			certPath, keyPath)
	}
	return createCA(dir, keyPath, certPath)
}

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

func loadCAFiles(certPath, keyPath string) (*CA, error) {
	if err := checkPrivateMode(keyPath); err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	ca, err := LoadCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w (files %s, %s)", err, certPath, keyPath)
	}
	return ca, nil
}

// checkPrivateMode refuses a key file that is not a regular file or that its
// group or others may read, write or execute.
func checkPrivateMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %#o, which lets other users read the private key; run `chmod 600 %s` (and consider the key exposed)",
			path, perm, path)
	}
	return nil
}

func createCA(dir, keyPath, certPath string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: create CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA: generate key: %w", err)
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return nil, fmt.Errorf("pki: create CA: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("pki: create CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"Ferry"},
			CommonName:   "Ferry CA " + hex.EncodeToString(suffix),
		},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA: sign certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA: encode key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// Key first: a crash in between leaves a key without a certificate, which
	// LoadOrCreateCA reports, never a certificate whose key is lost.
	if err := WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("pki: create CA: %w", err)
	}
	if err := WriteFileAtomic(certPath, certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("pki: create CA: %w", err)
	}
	return LoadCA(certPEM, keyPEM)
}

// LoadCA returns the CA made of a PEM-encoded CA certificate and its
// PEM-encoded private key (PKCS #8, SEC 1 "EC PRIVATE KEY" or PKCS #1 "RSA
// PRIVATE KEY"), for configurations where the operator provides the files.
// The certificate must be a CA allowed to sign certificates, and the key must
// match it.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA certificate: %w", err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("pki: load CA certificate: %q is not a CA certificate (basic constraints CA:TRUE missing)", cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("pki: load CA certificate: %q may not sign certificates (key usage lacks certSign)", cert.Subject)
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA key: %w", err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("pki: load CA: the private key does not match the certificate %q", cert.Subject)
	}
	return &CA{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		key:     key,
	}, nil
}

// ParseCertificatePEM parses data holding exactly one CERTIFICATE PEM
// block, as the certificate files pairing and renewal write do.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("PEM block is %q, want CERTIFICATE", block.Type)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("data after the CERTIFICATE block; want exactly one certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	return cert, nil
}

// parsePrivateKey parses data holding exactly one PEM private key block.
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("data after the %s block; want exactly one key", block.Type)
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, err
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey, ed25519.PrivateKey, *rsa.PrivateKey:
		return k.(crypto.Signer), nil
	default:
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// randomSerial returns a random positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// notAfter returns the end of a certificate's validity starting now, never
// past the CA's own NotAfter.
func (ca *CA) notAfter(now time.Time, validity time.Duration) time.Time {
	end := now.Add(validity)
	if end.After(ca.cert.NotAfter) {
		end = ca.cert.NotAfter
	}
	return end
}
