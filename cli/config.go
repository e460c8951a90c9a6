package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/pki"
)

// Config is what `ferry login` saves: where the server is, the token and
// the CA pin. The file is 0600: it holds a secret.
type Config struct {
	Addr          string `json:"addr"`
	Token         string `json:"token"`
	CAFingerprint string `json:"ca_fingerprint"`
}

// ConfigPath is where the CLI keeps its configuration: $FERRY_CONFIG, or
// ferry/config.json under the user's configuration directory.
func ConfigPath() (string, error) {
	if p := os.Getenv("FERRY_CONFIG"); p != "" {
		return p, nil
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find configuration directory: %w (set FERRY_CONFIG)", err)
	}
	return filepath.Join(d, "ferry", "config.json"), nil
}

// LoadConfig reads the saved configuration; a missing file is an empty
// configuration.
func LoadConfig() (Config, error) {
	var c Config
	p, err := ConfigPath()
	if err != nil {
		return c, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("read %s: %w", p, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("read %s: %w (fix or delete it, then run ferry login)", p, err)
	}
	return c, nil
}

// Save writes the configuration with mode 0600.
func (c Config) Save() (string, error) {
	p, err := ConfigPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", filepath.Dir(p), err)
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	if err := pki.WriteFileAtomic(p, b, 0o600); err != nil {
		return "", fmt.Errorf("save %s: %w", p, err)
	}
	return p, nil
}

// Resolve fills the configuration from FERRY_ADDR, FERRY_TOKEN and
// FERRY_CA_FINGERPRINT, which win over the saved file.
func Resolve() (Config, error) {
	c, err := LoadConfig()
	if err != nil {
		return c, err
	}
	for env, p := range map[string]*string{"FERRY_ADDR": &c.Addr, "FERRY_TOKEN": &c.Token, "FERRY_CA_FINGERPRINT": &c.CAFingerprint} {
		if v := os.Getenv(env); v != "" {
			*p = v
		}
	}
	return c, nil
}

// Client builds an API client from the configuration, pinning the CA.
func (c Config) Client() (*api.Client, error) {
	if c.Addr == "" {
		return nil, errors.New("no server address: run 'ferry login --addr https://HOST:8443 …' or set FERRY_ADDR")
	}
	if c.CAFingerprint == "" {
		return nil, errors.New("no CA fingerprint: run 'ferry login --ca-fingerprint …' or set FERRY_CA_FINGERPRINT (the server prints it on first start)")
	}
	pin, err := pki.ParseFingerprint(c.CAFingerprint)
	if err != nil {
		return nil, fmt.Errorf("CA fingerprint: %w", err)
	}
	return api.NewClient(c.Addr, c.Token, pki.ClientTLSConfig(pin, nil))
}
