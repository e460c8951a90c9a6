package dataplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/protocol"
)

// defaultAgentCertValidity is how long a renewed agent certificate lasts
// when Server.AgentCertValidity is 0: a year, as pairing issues.
const defaultAgentCertValidity = 365 * 24 * time.Hour

// errStaleCert refuses a RENEW from a certificate the server no longer
// takes as the agent's current or previous one.
var errStaleCert = errors.New("the certificate this session authenticated with is no longer the server's")

// renew answers an agent's RENEW: it signs the request for the session's
// server and makes the new certificate the one the server accepts,
// keeping the one the session authenticated with as the previous until
// the agent connects with the new one (markConnected). The certificate is
// signed before the record changes, so a bad request changes nothing; a
// certificate signed but not recorded is never accepted.
func (ss *session) renew(ctx context.Context, m *protocol.Renew) (string, error) {
	validity := ss.s.AgentCertValidity
	if validity <= 0 {
		validity = defaultAgentCertValidity
	}
	certPEM, serial, err := ss.s.CA.SignAgentCSR([]byte(m.CSR), ss.id, validity)
	if err != nil {
		return "", fmt.Errorf("RENEW: certificate request: %w", err)
	}
	_, err = ss.s.Store.UpdateServer(ctx, ss.id, func(srv *ferry.SourceServer) error {
		// The session outlives a re-pairing or a disconnect from the
		// service, which retire its certificate: it may not renew it.
		if !accepts(srv, ss.serial) {
			return errStaleCert
		}
		// The certificate the agent holds now stays valid until it has
		// connected with the new one: an agent stopped before saving the
		// new one can still connect and renew again.
		srv.AgentCertSerial, srv.AgentCertPrevSerial = serial.String(), ss.serial
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("RENEW: record the renewed certificate: %w", err)
	}
	ss.s.log().Info("agent certificate renewed", "server", ss.id, "old_serial", ss.serial, "serial", serial.String())
	return string(certPEM), nil
}
