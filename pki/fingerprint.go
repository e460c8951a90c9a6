package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
)

// FingerprintSize is the length in bytes of a certificate fingerprint.
const FingerprintSize = sha256.Size

// Fingerprint returns the SHA-256 digest of the certificate's DER encoding as
// 64 lowercase hex digits, the form Ferry prints and [ParseFingerprint] reads.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// ParseFingerprint parses a SHA-256 certificate fingerprint written as 64 hex
// digits, either plain ("ab12…") or as colon-separated pairs ("AB:12:…"), in
// either case, with an optional "sha256:" prefix and surrounding spaces. It
// returns the 32 digest bytes, or an error saying what is wrong with s.
func ParseFingerprint(s string) ([]byte, error) {
	t := strings.TrimSpace(s)
	if len(t) >= 7 && strings.EqualFold(t[:7], "sha256:") {
		t = strings.TrimSpace(t[7:])
	}
	if t == "" {
		return nil, fmt.Errorf("pki: fingerprint is empty; want %d hex digits (SHA-256)", 2*FingerprintSize)
	}
	hexDigits := t
	if strings.Contains(t, ":") {
		parts := strings.Split(t, ":")
		for i, p := range parts {
			if len(p) != 2 {
				return nil, fmt.Errorf("pki: fingerprint %q: group %d is %q; want colon-separated pairs of hex digits", s, i+1, p)
			}
		}
		hexDigits = strings.Join(parts, "")
	}
	for i, r := range hexDigits {
		if !isHexDigit(r) {
			return nil, fmt.Errorf("pki: fingerprint %q: %q is not a hex digit (at digit %d)", s, r, i+1)
		}
	}
	if len(hexDigits) != 2*FingerprintSize {
		return nil, fmt.Errorf("pki: fingerprint %q has %d hex digits; want %d (SHA-256)", s, len(hexDigits), 2*FingerprintSize)
	}
	b, err := hex.DecodeString(hexDigits)
	if err != nil { // unreachable after the checks above; kept for safety
		return nil, fmt.Errorf("pki: fingerprint %q: %w", s, err)
	}
	return b, nil
}

func isHexDigit(r rune) bool {
	return ('0' <= r && r <= '9') || ('a' <= r && r <= 'f') || ('A' <= r && r <= 'F')
}
