package harness

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/agent"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/replica/fs"
	"github.com/ferrymigrate/ferry/sqlite"
	"github.com/ferrymigrate/ferry/track"
)

// ServerID is the id of the harness's one source server.
const ServerID = "s-1"

// Harness is an in-process replication server with one paired source
// server.
type Harness struct {
	Store   ferry.Store
	Replica *replica.Store
	DP      *dataplane.Server
	// Addr is the data plane's host:port on 127.0.0.1.
	Addr string

	tlsConf                *tls.Config
	ca                     *pki.CA
	keyPEM, certPEM, caPEM []byte
	cancel                 context.CancelFunc
	done                   chan error
	closeOnce              sync.Once
}

// New starts a harness keeping its files in dir (created). obs, if not
// nil, observes the data plane's writes and acknowledgements.
func New(ctx context.Context, dir string, obs dataplane.Observer) (*Harness, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	st, err := sqlite.Open(filepath.Join(dir, "db"))
	if err != nil {
		return nil, err
	}
	h := &Harness{Store: st}
	fail := func(err error) (*Harness, error) {
		if h.Replica != nil {
			h.Replica.Close()
		}
		st.Close()
		return nil, err
	}
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "pki"))
	if err != nil {
		return fail(err)
	}
	cert, err := ca.IssueServerCert([]string{"127.0.0.1"}, 24*time.Hour)
	if err != nil {
		return fail(err)
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("agent")
	if err != nil {
		return fail(err)
	}
	certPEM, serial, err := ca.SignAgentCSR(csrPEM, ServerID, 24*time.Hour)
	if err != nil {
		return fail(err)
	}
	agentCert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fail(fmt.Errorf("agent certificate: %w", err))
	}
	if h.tlsConf, err = pki.ClientTLSConfigWithCA(ca.CertPEM(), &agentCert); err != nil {
		return fail(err)
	}
	h.keyPEM, h.certPEM, h.caPEM, h.ca = keyPEM, certPEM, ca.CertPEM(), ca
	srv := &ferry.SourceServer{ID: ServerID, MachineID: "bench", Hostname: "bench", Lifecycle: ferry.LifecycleNotReady,
		AgentCertSerial: serial.String(), Replication: ferry.ReplicationInfo{State: ferry.ReplicationStopped}}
	if err := st.CreateServer(ctx, srv); err != nil {
		return fail(err)
	}
	keys, err := replica.OpenKeyFile(filepath.Join(dir, "replica.key"))
	if err != nil {
		return fail(err)
	}
	be, err := fs.Open(filepath.Join(dir, "objects"), fs.Packed(replica.ChunkPrefix))
	if err != nil {
		return fail(err)
	}
	if h.Replica, err = replica.Open(ctx, replica.Options{Dir: filepath.Join(dir, "staging"), Backend: be, CloseBackend: true, Keys: keys}); err != nil {
		be.Close()
		return fail(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(fmt.Errorf("listen: %w", err))
	}
	h.DP = &dataplane.Server{Store: st, CA: ca, Cert: cert, Replica: h.Replica, PollInterval: 200 * time.Millisecond,
		Observer: obs, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	sctx, cancel := context.WithCancel(context.Background())
	h.Addr, h.cancel, h.done = ln.Addr().String(), cancel, make(chan error, 1)
	go func() { h.done <- h.DP.Serve(sctx, ln) }()
	return h, nil
}

// AddServer creates another paired source server (NOT_READY) and returns
// what dials the data plane with its certificate: benchmarks with many
// sources (the connector's VMs) use one each.
func (h *Harness) AddServer(ctx context.Context, id, name string) (func(context.Context) (net.Conn, error), error) {
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(name)
	if err != nil {
		return nil, err
	}
	certPEM, serial, err := h.ca.SignAgentCSR(csrPEM, id, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("harness: certificate of %s: %w", id, err)
	}
	conf, err := pki.ClientTLSConfigWithCA(h.caPEM, &cert)
	if err != nil {
		return nil, err
	}
	srv := &ferry.SourceServer{ID: id, MachineID: "bench-" + id, Hostname: name, Lifecycle: ferry.LifecycleNotReady,
		AgentCertSerial: serial.String(), Replication: ferry.ReplicationInfo{State: ferry.ReplicationStopped}}
	if err := h.Store.CreateServer(ctx, srv); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	return func(ctx context.Context) (net.Conn, error) {
		d := tls.Dialer{Config: conf}
		return d.DialContext(ctx, "tcp", h.Addr)
	}, nil
}

// Close stops the data plane and closes the stores; later calls do
// nothing.
func (h *Harness) Close() {
	h.closeOnce.Do(func() {
		h.cancel()
		<-h.done
		h.Replica.Close()
		h.Store.Close()
	})
}

// Agent runs the agent in this process on dev until ctx ends, with state
// in stateDir (created: the agent saves its progress there, and a later
// agent on the same directory resumes from it). The channel receives
// Replicate's result.
func (h *Harness) Agent(ctx context.Context, stateDir, dev string, tr track.Tracker) (chan error, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent state directory: %w", err)
	}
	done := make(chan error, 1)
	go func() {
		done <- agent.Replicate(ctx, agent.Options{StateDir: stateDir, Devices: []string{dev}, Tracker: tr, ServerID: ServerID,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Dial: func(ctx context.Context) (net.Conn, error) {
				d := tls.Dialer{Config: h.tlsConf}
				return d.DialContext(ctx, "tcp", h.Addr)
			}})
	}()
	return done, nil
}

// WriteAgentState writes what pairing leaves in an agent's state
// directory (key, certificate, CA, state.json), so `ferry agent
// --state-dir dir` replicates to this harness without a control plane.
// It reads the directory back through the agent's own loaders, so a
// change of their layout fails here rather than in the agent process.
func (h *Harness) WriteAgentState(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("agent state directory: %w", err)
	}
	sj, err := json.Marshal(agent.State{SourceServerID: ServerID, DataPlaneAddress: h.Addr, MachineID: "bench"})
	if err != nil {
		return fmt.Errorf("agent state: %w", err)
	}
	for name, data := range map[string][]byte{"agent.key": h.keyPEM, "agent.crt": h.certPEM, "ca.crt": h.caPEM, "state.json": sj} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return fmt.Errorf("agent state: %w", err)
		}
	}
	st, err := agent.LoadState(dir)
	if err != nil {
		return fmt.Errorf("agent state written for the bench does not load: %w", err)
	}
	if st.DataPlaneAddress != h.Addr {
		return fmt.Errorf("agent state written for the bench reads back address %q", st.DataPlaneAddress)
	}
	if _, err := agent.DataPlaneTLS(dir); err != nil {
		return fmt.Errorf("agent identity written for the bench does not load: %w", err)
	}
	return nil
}

// Server returns the source server's record.
func (h *Harness) Server(ctx context.Context) (*ferry.SourceServer, error) {
	return h.Store.Server(ctx, ServerID)
}

// WaitFor polls the source server's record every 20 ms until cond holds,
// within the given time.
func (h *Harness) WaitFor(ctx context.Context, within time.Duration, cond func(*ferry.SourceServer) bool) error {
	deadline := time.Now().Add(within)
	for {
		s, err := h.Server(ctx)
		if err == nil && cond(s) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication did not reach the wanted state within %v", within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// DiskID is the replica disk id of device dev of the harness's server.
func DiskID(dev string) string { return dataplane.DiskID(ServerID, filepath.Base(dev)) }

// ReplicaMatches compares the replica's durable head of dev with dev by
// sha256; a difference is an error.
func (h *Harness) ReplicaMatches(ctx context.Context, dev string) (bool, error) {
	id := DiskID(dev)
	d, err := h.Replica.Disk(id)
	if err != nil {
		return false, err
	}
	r, err := d.OpenHead(ctx)
	if err != nil {
		return false, err
	}
	defer r.Close()
	f, err := os.Open(dev)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	a, err := FileSHA(r, r.Size())
	if err != nil {
		return false, fmt.Errorf("read replica: %w", err)
	}
	b, err := FileSHA(f, r.Size())
	if err != nil {
		return false, fmt.Errorf("read %s: %w", dev, err)
	}
	if a != b {
		return false, fmt.Errorf("replica %s differs from %s", id, dev)
	}
	return true, nil
}

// FileSHA is the sha256 of the first size bytes of r.
func FileSHA(r io.ReaderAt, size int64) ([32]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		return [32]byte{}, err
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s, nil
}
