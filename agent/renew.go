package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/protocol"
)

// An agent renews its certificate over its data-plane session
// (protocol.Renew) once less than renewWithin of the certificate's
// lifetime is left, so that an agent replicating for longer than the
// certificate lasts is never locked out. The new key is written beside
// the old one first, the certificate once it arrives, and both replace
// the old pair by renames; finishRenewal completes a renewal a crash
// interrupted, and the server keeps accepting the old certificate until
// the agent has connected with the new one.
const (
	// renewWithin is the share of the lifetime left that starts a renewal:
	// a one-year certificate renews with four months to go.
	renewWithin = 3
	// renewRetry is how long after a refused or unanswered RENEW the
	// agent asks again within one session.
	renewRetry = time.Hour
)

// Files of a renewal in progress in the state directory.
const (
	nextKeyFile  = keyFile + ".next"
	nextCertFile = certFile + ".next"
)

// Renewer renews the certificate in a state directory over a data-plane
// session (protocol revision 4): Due says when, Request makes the RENEW,
// Answer installs what RENEWED brings. The agent runs one when it dials
// with its state directory's identity (Options.Dial nil); the connector
// one per VM. Its methods may be called concurrently.
type Renewer struct {
	dir string

	mu      sync.Mutex
	pending []byte    // key PEM of the RENEW in flight, if any; guarded by mu
	asked   time.Time // when it was sent; guarded by mu
}

// NewRenewer returns a Renewer of the identity in state directory dir.
func NewRenewer(dir string) *Renewer { return &Renewer{dir: dir} }

// Due reports whether the certificate in the state directory should be
// renewed at now: less than a third of its lifetime left, and no request
// sent within the last hour. Without a certificate there it is never due.
func (r *Renewer) Due(now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending != nil && now.Sub(r.asked) < renewRetry {
		return false
	}
	leaf, err := loadLeaf(filepath.Join(r.dir, certFile))
	if err != nil {
		return false
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotAfter.Sub(now) < life/renewWithin
}

// Request makes a new key, saves it beside the current one and returns
// the RENEW to send for it at now.
func (r *Renewer) Request(now time.Time) (*protocol.Renew, error) {
	host, _ := os.Hostname()
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(host)
	if err != nil {
		return nil, fmt.Errorf("renew certificate: %w", err)
	}
	if err := pki.WriteFileAtomic(filepath.Join(r.dir, nextKeyFile), keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("renew certificate: save the new key: %w", err)
	}
	r.mu.Lock()
	r.pending, r.asked = keyPEM, now
	r.mu.Unlock()
	return &protocol.Renew{CSR: string(csrPEM)}, nil
}

// Answer installs the certificate a RENEWED carries, after checking that
// it is for the key of the request in flight and chains to the CA saved
// at pairing; it returns the new certificate's expiry. A refusal, or a
// certificate that fails a check, is an error and changes nothing: the
// current certificate still works, and Due asks again an hour after the
// request.
func (r *Renewer) Answer(m *protocol.Renewed) (time.Time, error) {
	r.mu.Lock()
	keyPEM := r.pending
	r.mu.Unlock()
	if m.Refusal != "" {
		return time.Time{}, fmt.Errorf("the server did not renew the certificate: %s", m.Refusal)
	}
	if keyPEM == nil {
		return time.Time{}, errors.New("RENEWED without a RENEW in flight")
	}
	leaf, err := checkPair(r.dir, []byte(m.Certificate), keyPEM)
	if err != nil {
		return time.Time{}, fmt.Errorf("renewed certificate: %w", err)
	}
	if err := pki.WriteFileAtomic(filepath.Join(r.dir, nextCertFile), []byte(m.Certificate), 0o600); err != nil {
		return time.Time{}, fmt.Errorf("renewed certificate: save: %w", err)
	}
	if err := finishRenewal(r.dir); err != nil {
		return time.Time{}, err
	}
	r.mu.Lock()
	r.pending = nil
	r.mu.Unlock()
	return leaf.NotAfter, nil
}

// checkPair checks that certPEM is for keyPEM's key, is a client
// certificate of the CA saved in dir and is valid now; it returns the
// certificate.
func checkPair(dir string, certPEM, keyPEM []byte) (*x509.Certificate, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("does not match the new key: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, caFile))
	if err != nil {
		return nil, fmt.Errorf("load the CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no certificate", caFile)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("not issued by the CA saved at pairing: %w", err)
	}
	return leaf, nil
}

// finishRenewal completes a renewal in dir: a saved next certificate that
// pairs with the next key (or, the key already moved, with the key)
// replaces the certificate; one that pairs with neither is removed. A next
// key alone (a RENEW never answered) is left for the next request to
// overwrite. Without a next certificate it does nothing.
func finishRenewal(dir string) error {
	next := filepath.Join(dir, nextCertFile)
	certPEM, err := os.ReadFile(next)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finish certificate renewal: %w", err)
	}
	if keyPEM, err := os.ReadFile(filepath.Join(dir, nextKeyFile)); err == nil {
		if _, err := checkPair(dir, certPEM, keyPEM); err == nil {
			if err := os.Rename(filepath.Join(dir, nextKeyFile), filepath.Join(dir, keyFile)); err != nil {
				return fmt.Errorf("finish certificate renewal: %w", err)
			}
		}
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return fmt.Errorf("finish certificate renewal: %w", err)
	}
	if _, err := checkPair(dir, certPEM, keyPEM); err != nil {
		// A next certificate for no key we hold cannot be used.
		return os.Remove(next)
	}
	if err := os.Rename(next, filepath.Join(dir, certFile)); err != nil {
		return fmt.Errorf("finish certificate renewal: %w", err)
	}
	return syncDir(dir)
}

// syncDir makes the renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// loadLeaf reads a certificate file.
func loadLeaf(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := pki.ParseCertificatePEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// renewCheck is how often a session looks at its certificate's expiry.
const renewCheck = 10 * time.Minute

// Run sends a RENEW through send whenever the certificate is due, from
// now until done is closed or send fails (the session ended); the
// session's reader hands the RENEWED to Install.
func (r *Renewer) Run(done <-chan struct{}, send func(protocol.Message) error, log *slog.Logger) {
	t := time.NewTicker(renewCheck)
	defer t.Stop()
	for {
		if now := time.Now(); r.Due(now) {
			m, err := r.Request(now)
			if err != nil {
				log.Warn("certificate renewal", "err", err)
			} else if err := send(m); err != nil {
				return
			} else {
				log.Info("certificate due for renewal; asked the server for a new one")
			}
		}
		select {
		case <-done:
			return
		case <-t.C:
		}
	}
}

// Install is Answer, logging the outcome: a failed renewal keeps the
// certificate, which still works, and is asked for again later; it is no
// reason to end the session.
func (r *Renewer) Install(m *protocol.Renewed, log *slog.Logger) {
	if until, err := r.Answer(m); err != nil {
		log.Warn("certificate not renewed; asking again later", "err", err)
	} else {
		log.Info("certificate renewed", "valid_until", until)
	}
}
