package e2e

import (
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/pki"
)

func clientFor(s *server, token string) (*api.Client, error) {
	pin, err := pki.ParseFingerprint(s.fingerprint)
	if err != nil {
		return nil, err
	}
	return api.NewClient(s.addr, token, pki.ClientTLSConfig(pin, nil))
}
