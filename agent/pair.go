package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/pki"
)

// Version is the agent's version, sent at pairing.
var Version = "dev"

// State is what the agent keeps in its state directory after pairing.
type State struct {
	ServerURL        string `json:"server_url"`
	SourceServerID   string `json:"source_server_id"`
	DataPlaneAddress string `json:"data_plane_address"`
	MachineID        string `json:"machine_id"`
}

// Files in the state directory.
const (
	stateFile = "state.json"
	keyFile   = "agent.key"
	certFile  = "agent.crt"
	caFile    = "ca.crt"
)

// PairOptions say how to pair.
type PairOptions struct {
	// ServerURL is the control plane, https://host:8443.
	ServerURL string
	// InstallToken is the fyi_… token from 'ferry install-tokens create'.
	InstallToken string
	// CAFingerprint pins the server's CA on first contact.
	CAFingerprint string
	// StateDir keeps the key, certificate and state (created 0700).
	StateDir string
	// Devices names the disks to replicate; empty means all real disks.
	Devices []string
	// MachineID overrides the host's machine id (several agents on one
	// test host).
	MachineID string
	// Root is where /etc, /proc and /sys are read from ("" is /).
	Root Root
	// Discovered registers a new source server as DISCOVERED rather than
	// NOT_READY (the connector's catalog; see api.PairRequest).
	Discovered bool
}

// Pair pairs this host with the server: it gathers facts, makes a key and a
// CSR, sends them with the install token, and saves the issued
// certificate, the CA and the state, every file 0600. Pairing again
// (the same machine id) updates the same source server.
func Pair(ctx context.Context, o PairOptions) (*State, error) {
	if o.ServerURL == "" || o.InstallToken == "" || o.CAFingerprint == "" {
		return nil, errors.New("pair: --server, --install-token and --ca-fingerprint are all required")
	}
	if _, err := pki.ParseFingerprint(o.CAFingerprint); err != nil {
		return nil, fmt.Errorf("pair: --ca-fingerprint: %w", err)
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("pair: create state directory: %w", err)
	}
	if err := os.Chmod(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("pair: state directory: %w", err)
	}
	root := o.Root
	if root == "" {
		root = "/"
	}
	facts, err := root.GatherFacts(o.Devices, o.StateDir)
	if err != nil {
		return nil, fmt.Errorf("pair: %w", err)
	}
	if o.MachineID != "" {
		facts.MachineID = o.MachineID
	}
	return PairFacts(ctx, o, facts)
}

// PairFacts pairs like Pair but with facts the caller gathered (the
// connector pairs each VM it replicates with the VM's facts); o.Devices
// and o.Root are not used.
func PairFacts(ctx context.Context, o PairOptions, facts *Facts) (*State, error) {
	if o.ServerURL == "" || o.InstallToken == "" || o.CAFingerprint == "" {
		return nil, errors.New("pair: --server, --install-token and --ca-fingerprint are all required")
	}
	pin, err := pki.ParseFingerprint(o.CAFingerprint)
	if err != nil {
		return nil, fmt.Errorf("pair: --ca-fingerprint: %w", err)
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("pair: create state directory: %w", err)
	}
	if o.MachineID != "" {
		facts.MachineID = o.MachineID
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(facts.Hostname)
	if err != nil {
		return nil, fmt.Errorf("pair: %w", err)
	}
	c, err := api.NewClient(o.ServerURL, "", pki.ClientTLSConfig(pin, nil))
	if err != nil {
		return nil, fmt.Errorf("pair: %w", err)
	}
	resp, err := c.Pair(ctx, &api.PairRequest{
		InstallToken: o.InstallToken, MachineID: facts.MachineID, Hostname: facts.Hostname,
		OS: facts.OS, Kernel: facts.Kernel, CPUs: facts.CPUs, RAMBytes: facts.RAMBytes,
		NICs: facts.NICs, Disks: facts.Disks, AgentVersion: Version, CSR: string(csrPEM), Discovered: o.Discovered,
	})
	if err != nil {
		return nil, fmt.Errorf("pair with %s: %w", o.ServerURL, err)
	}
	if _, err := tls.X509KeyPair([]byte(resp.Certificate), keyPEM); err != nil {
		return nil, fmt.Errorf("pair: the server's certificate does not match our key: %w", err)
	}
	st := &State{ServerURL: o.ServerURL, SourceServerID: resp.SourceServerID, DataPlaneAddress: resp.DataPlaneAddress, MachineID: facts.MachineID}
	sj, _ := json.MarshalIndent(st, "", "  ")
	for _, f := range []struct {
		name string
		data []byte
	}{{keyFile, keyPEM}, {certFile, []byte(resp.Certificate)}, {caFile, []byte(resp.CACertificate)}, {stateFile, sj}} {
		if err := pki.WriteFileAtomic(filepath.Join(o.StateDir, f.name), f.data, 0o600); err != nil {
			return nil, fmt.Errorf("pair: save %s: %w", f.name, err)
		}
	}
	return st, nil
}

// LoadState reads the state a previous Pair saved; it wraps os.ErrNotExist
// when the agent has not paired yet.
func LoadState(stateDir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("agent state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("agent state %s: %w", filepath.Join(stateDir, stateFile), err)
	}
	return &st, nil
}

// DataPlaneTLS loads the agent's identity from its state directory as a TLS
// client configuration trusting only the CA saved at pairing.
func DataPlaneTLS(stateDir string) (*tls.Config, error) {
	// A renewal a crash interrupted is completed first, or the key and
	// the certificate could be of two different pairs.
	if err := finishRenewal(stateDir); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(stateDir, certFile), filepath.Join(stateDir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("load agent certificate: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(stateDir, caFile))
	if err != nil {
		return nil, fmt.Errorf("load server CA: %w", err)
	}
	return pki.ClientTLSConfigWithCA(caPEM, &cert)
}
