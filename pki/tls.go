package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// ServerTLSConfig returns a TLS 1.3-only server configuration presenting
// serverCert.
//
// With requireClientCert (the data plane) the client must present a
// certificate that verifies against this CA with extended key usage
// clientAuth and names a source server (see ServerIDFromCert); if
// ca.IsRevoked is set, it is asked on every handshake, including resumed
// sessions, and a revoked certificate is refused. Without requireClientCert
// (the HTTPS API, where callers authenticate with tokens) no client
// certificate is requested.
//
// Callers can read the verified agent's id from
// ConnectionState().PeerCertificates[0] with ServerIDFromCert.
func (ca *CA) ServerTLSConfig(serverCert tls.Certificate, requireClientCert bool) *tls.Config {
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.NoClientCert,
	}
	if !requireClientCert {
		return cfg
	}
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.ClientCAs = ca.Pool()
	isRevoked := ca.IsRevoked
	// VerifyConnection, unlike VerifyPeerCertificate, also runs on resumed
	// sessions, so a certificate revoked after its first handshake cannot
	// come back through a session ticket.
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || len(cs.VerifiedChains) == 0 {
			return errors.New("pki: client certificate required")
		}
		leaf := cs.PeerCertificates[0]
		id, err := ServerIDFromCert(leaf)
		if err != nil {
			return fmt.Errorf("pki: client certificate refused: %w", err)
		}
		if isRevoked != nil && isRevoked(leaf.SerialNumber, id) {
			return fmt.Errorf("pki: client certificate refused: serial %x for server %s is revoked", leaf.SerialNumber, id)
		}
		return nil
	}
	return cfg
}

// ClientTLSConfig returns a TLS 1.3-only client configuration for an agent's
// first contact with a server, when all the agent knows is the CA's SHA-256
// fingerprint (pinnedFingerprint, 32 bytes, see ParseFingerprint).
//
// The server is trusted if the chain it presents contains a CA certificate
// whose fingerprint equals the pin and its leaf certificate verifies against
// that CA alone (signatures, validity periods, serverAuth usage); the system
// roots are never consulted. The host name is not checked: the pinned CA is
// the installation's own, it issues serverAuth certificates only to Ferry
// servers, and agents often reach a server through NAT or an address missing
// from its certificate. A pin of the wrong length makes every handshake fail.
//
// InsecureSkipVerify is set only because crypto/tls cannot take a trust
// anchor that arrives in the handshake itself; the VerifyConnection hook does
// the complete chain verification against the pinned CA instead, and it
// runs on every handshake, resumed or not.
//
// If clientCert is not nil it is sent whenever the server asks for a
// certificate.
func ClientTLSConfig(pinnedFingerprint []byte, clientCert *tls.Certificate) *tls.Config {
	pin := bytes.Clone(pinnedFingerprint)
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // see VerifyConnection below and the doc comment
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(pin) != sha256.Size {
				return fmt.Errorf("pki: pinned CA fingerprint is %d bytes, want %d", len(pin), sha256.Size)
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("pki: server sent no certificate")
			}
			var anchor *x509.Certificate
			for _, c := range cs.PeerCertificates[1:] {
				sum := sha256.Sum256(c.Raw)
				if bytes.Equal(sum[:], pin) && c.BasicConstraintsValid && c.IsCA {
					anchor = c
					break
				}
			}
			if anchor == nil {
				var got []string
				for _, c := range cs.PeerCertificates {
					got = append(got, fmt.Sprintf("%q %s", c.Subject.CommonName, Fingerprint(c)))
				}
				return fmt.Errorf("pki: server certificate chain has no CA with the pinned fingerprint %x (got %s); check --ca-fingerprint against `ferry server` output",
					pin, strings.Join(got, ", "))
			}
			return verifyServerChain(cs.PeerCertificates, anchor)
		},
	}
	setClientCert(cfg, clientCert)
	return cfg
}

// ClientTLSConfigWithCA returns a TLS 1.3-only client configuration for an
// agent that saved the CA certificate (caPEM, exactly one CERTIFICATE PEM
// block) at pairing. The server's certificate must verify against that CA
// alone, with serverAuth usage; as with ClientTLSConfig the host name is not
// checked and the system roots are never consulted. If clientCert is not nil
// it is sent whenever the server asks for a certificate.
func ClientTLSConfigWithCA(caPEM []byte, clientCert *tls.Certificate) (*tls.Config, error) {
	ca, err := ParseCertificatePEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: client TLS config: CA certificate: %w", err)
	}
	if !ca.BasicConstraintsValid || !ca.IsCA {
		return nil, fmt.Errorf("pki: client TLS config: %q is not a CA certificate", ca.Subject)
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // VerifyConnection verifies the chain against ca; see ClientTLSConfig
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("pki: server sent no certificate")
			}
			return verifyServerChain(cs.PeerCertificates, ca)
		},
	}
	setClientCert(cfg, clientCert)
	return cfg, nil
}

// verifyServerChain verifies certs[0] as a TLS server certificate issued
// under anchor, the only root, using the other certificates as intermediates.
func verifyServerChain(certs []*x509.Certificate, anchor *x509.Certificate) error {
	roots := x509.NewCertPool()
	roots.AddCert(anchor)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		if !c.Equal(anchor) {
			inter.AddCert(c)
		}
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("pki: server certificate %q does not verify against the Ferry CA %q: %w",
			certs[0].Subject.CommonName, anchor.Subject.CommonName, err)
	}
	return nil
}

func setClientCert(cfg *tls.Config, clientCert *tls.Certificate) {
	if clientCert == nil {
		return
	}
	c := *clientCert
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &c, nil
	}
}
