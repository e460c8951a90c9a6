package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/controlplane"
	"github.com/ferrymigrate/ferry/dashboard"
	"github.com/ferrymigrate/ferry/dataplane"
	"github.com/ferrymigrate/ferry/jobs"
	"github.com/ferrymigrate/ferry/metrics"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/postgres"
	"github.com/ferrymigrate/ferry/replica"
	"github.com/ferrymigrate/ferry/sqlite"
)

// Version is reported by /health and the agent; set at build time.
var Version = "dev"

// OpenStore opens the metadata store a database setting names:
// "sqlite:PATH" or a postgres:// URL.
func OpenStore(ctx context.Context, database string) (ferry.Store, error) {
	switch {
	case strings.HasPrefix(database, "sqlite:"):
		return sqlite.Open(strings.TrimPrefix(database, "sqlite:"))
	case strings.HasPrefix(database, "postgres://"), strings.HasPrefix(database, "postgresql://"):
		return postgres.Open(ctx, database)
	}
	return nil, fmt.Errorf("database %q: want sqlite:PATH or postgres://…", database)
}

// Server is a running `ferry server`.
type Server struct {
	cfg      config.Server
	store    ferry.Store
	notified ferry.Store // store for the control plane and jobs: tells the data plane of changes
	replica  *replica.Store
	ca       *pki.CA
	cert     tls.Certificate
	log      *slog.Logger

	// APIAddr and DataAddr are the bound listen addresses, known after
	// Start (useful with port 0).
	APIAddr, DataAddr string

	apiLn, dataLn net.Listener
	httpSrv       *http.Server
	data          *dataplane.Server
	jobs          *jobs.Runner
	launcher      *launcher
	nbdLn         net.Listener
	cp            *controlplane.Server
	gcObserve     func(end time.Time, d time.Duration, s replica.GCStats, err error)
}

// Start opens everything a server needs and binds its listeners; Serve
// then runs it. out receives the one-time first-start banner (admin token,
// CA fingerprint), never the log.
func Start(ctx context.Context, cfg config.Server, log *slog.Logger, out io.Writer) (*Server, error) {
	if err := cfg.Finish(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	s := &Server{cfg: cfg, log: log}
	var err error
	if s.ca, s.cert, err = loadPKI(cfg); err != nil {
		return nil, err
	}
	if s.store, err = OpenStore(ctx, cfg.Database); err != nil {
		return nil, fmt.Errorf("open metadata store: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if s.replica, err = OpenReplica(ctx, cfg.DataDir, func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...)) }); err != nil {
		return nil, err
	}
	if err := controlplane.EnsureDefaultTemplate(ctx, s.store); err != nil {
		return nil, fmt.Errorf("create default template: %w", err)
	}
	if err := s.firstAdmin(ctx, out); err != nil {
		return nil, err
	}
	if s.apiLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen for the API on %s: %w", cfg.Listen, err)
	}
	if s.dataLn, err = net.Listen("tcp", cfg.DataListen); err != nil {
		return nil, fmt.Errorf("listen for agents on %s: %w", cfg.DataListen, err)
	}
	s.APIAddr, s.DataAddr = s.apiLn.Addr().String(), s.dataLn.Addr().String()

	s.data = &dataplane.Server{Store: s.store, CA: s.ca, Cert: s.cert, Logger: log, Replica: s.replica,
		UnstableDrops: cfg.Drops, UnstableWindow: cfg.Window, BulkCreditPool: cfg.CreditPool,
		BulkCreditBytes: cfg.AgentBulkCredit, AgentCertValidity: cfg.AgentCertLife}
	// The control plane and the jobs change servers through a store that
	// tells the data plane, so settings reach connected agents at once.
	s.notified = notifyingStore{Store: s.store, changed: s.data.Notify}
	if err := s.startLaunches(ctx, cfg, log); err != nil {
		return nil, err
	}
	reg, apiMetrics := metrics.NewRegistry(s.store, log)
	s.jobs.OnEnd = metrics.NewJobs(reg).Ended
	metrics.RegisterDiskFree(reg, cfg.DataDir)
	gcm := metrics.NewGC(reg)
	s.gcObserve = func(end time.Time, d time.Duration, st replica.GCStats, err error) {
		gcm.Ran(end, d, st.Deleted, st.FreedBytes, err)
	}
	reg.MustRegister(&metrics.DataPlaneCollector{Sessions: s.data.Sessions, BulkCredit: func() (int64, int64) {
		return s.data.BulkCreditInUse(), s.data.BulkCreditPoolBytes()
	}, StoreUsage: func(ctx context.Context) (int64, int64, error) {
		u, err := s.replica.Usage(ctx)
		if err != nil {
			return 0, 0, err
		}
		var logical int64
		for _, d := range u.Disks {
			logical += d.Allocated
		}
		return logical, u.StoredBytes, nil
	}})
	if ws, ok := s.store.(interface{ WriterStats() sqlite.WriterStats }); ok {
		// The two types have the same fields; metrics does not import
		// the store.
		metrics.RegisterWriter(reg, func() metrics.WriterStats { return metrics.WriterStats(ws.WriterStats()) })
	}
	cp := &controlplane.Server{
		Store: s.notified, Signer: s.ca, DataPlaneAddr: advertised(cfg.Advertise, s.DataAddr),
		Version: Version, Logger: log, Observe: apiMetrics.Observe, Snapshots: s.data, Jobs: s.jobs,
		DataPlane: dataPlaneFigures{s.data}, Usage: stagingUsage{s.replica}, Replicas: s.data, Started: time.Now().UTC(),
		AgentCertValidity: cfg.AgentCertLife,
	}
	s.cp = cp
	mux := http.NewServeMux()
	mux.Handle(controlplane.APIPrefix+"/", cp.Handler())
	// /metrics is on the API port and needs a viewer (or better) token, as
	// the API does: Prometheus sends it with authorization.credentials.
	mux.Handle("GET /metrics", cp.RequireRole(ferry.RoleViewer, "metrics", metrics.Handler(reg)))
	// The dashboard (Migration Hub) is everything else on the API port.
	mux.Handle("/", dashboard.Handler())
	s.httpSrv = &http.Server{
		Handler:           mux,
		TLSConfig:         s.ca.ServerTLSConfig(s.cert, false),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	// Event streams never end on their own; end them when shutdown begins.
	s.httpSrv.RegisterOnShutdown(cp.CloseStreams)
	ok = true
	return s, nil
}

// advertised is the data-plane address told to agents: the advertise host
// with the bound port, or the bound address.
func advertised(host, bound string) string {
	_, port, _ := net.SplitHostPort(bound)
	if host == "" {
		h, _ := os.Hostname()
		if bh, _, _ := net.SplitHostPort(bound); bh != "" && bh != "::" && bh != "0.0.0.0" {
			h = bh
		}
		if h == "" {
			h = "localhost"
		}
		host = h
	}
	return net.JoinHostPort(host, port)
}

func loadPKI(cfg config.Server) (*pki.CA, tls.Certificate, error) {
	if cfg.Dev && cfg.CACert == "" {
		dir := filepath.Join(cfg.DataDir, "pki")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, tls.Certificate{}, fmt.Errorf("create pki directory: %w", err)
		}
		ca, err := pki.LoadOrCreateCA(dir)
		if err != nil {
			return nil, tls.Certificate{}, err
		}
		hosts := []string{"localhost", "127.0.0.1", "::1"}
		if h, err := os.Hostname(); err == nil {
			hosts = append(hosts, h)
		}
		if cfg.Advertise != "" {
			hosts = append(hosts, cfg.Advertise)
		}
		cert, err := pki.LoadOrCreateServerCert(dir, ca, hosts)
		return ca, cert, err
	}
	caCert, err := os.ReadFile(cfg.CACert)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("read ca_cert: %w", err)
	}
	caKey, err := os.ReadFile(cfg.CAKey)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("read ca_key: %w", err)
	}
	ca, err := pki.LoadCA(caCert, caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("load tls_cert/tls_key: %w", err)
	}
	// Agents pin the CA, so the server must send it after its leaf.
	if last := cert.Certificate[len(cert.Certificate)-1]; !bytes.Equal(last, ca.Certificate().Raw) {
		cert.Certificate = append(cert.Certificate, ca.Certificate().Raw)
	}
	return ca, cert, nil
}

// firstAdmin makes an admin token when the store has none. In dev mode the
// secret is printed once; otherwise it is written to a 0600 file in the
// data directory, so it never lands in a log collector.
func (s *Server) firstAdmin(ctx context.Context, out io.Writer) error {
	toks, err := s.store.ListTokens(ctx)
	if err != nil {
		return fmt.Errorf("list tokens: %w", err)
	}
	for _, t := range toks {
		if t.Role == ferry.RoleAdmin && t.RevokedAt.IsZero() {
			return nil
		}
	}
	t, err := controlplane.CreateToken(ctx, s.store, "first-admin", ferry.RoleAdmin, time.Now().UTC(), 0)
	if err != nil {
		return fmt.Errorf("create first admin token: %w", err)
	}
	if s.cfg.Dev {
		fmt.Fprintf(out, "\nFerry first start: admin API token (shown once, stored hashed):\n\n    %s\n\nCA fingerprint (agents and the CLI pin it):\n\n    %s\n\n", t.Secret, s.ca.Fingerprint())
		return nil
	}
	p := filepath.Join(s.cfg.DataDir, "first-admin.token")
	if err := pki.WriteFileAtomic(p, []byte(t.Secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("save first admin token: %w", err)
	}
	fmt.Fprintf(out, "Ferry first start: the admin API token is in %s (0600); read it, then delete the file.\nCA fingerprint: %s\n", p, s.ca.Fingerprint())
	return nil
}

// CAFingerprint is the CA's SHA-256 fingerprint, for agents and the CLI.
func (s *Server) CAFingerprint() string { return s.ca.Fingerprint() }

// Replica is the server's replica store.
func (s *Server) Replica() *replica.Store { return s.replica }

// DataPlane is the server's replication listener.
func (s *Server) DataPlane() *dataplane.Server { return s.data }

// Store is the server's metadata store.
func (s *Server) Store() ferry.Store { return s.store }

// Serve runs the API and the data plane until ctx ends, then stops both:
// in-flight API calls get up to 10 seconds to finish.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 3)
	go func() {
		err := s.httpSrv.ServeTLS(s.apiLn, "", "")
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { errc <- s.data.Serve(dctx, s.dataLn) }()
	go func() { errc <- s.serveExports(dctx) }()
	go s.cp.RunHistory(dctx)
	// Point-in-time snapshots and retention, per each server's policy;
	// waited for below, so that no snapshot is half-taken at Close.
	pitDone := make(chan struct{})
	go func() { defer close(pitDone); s.data.RunPointInTime(dctx, time.Minute) }()
	// Online GC, so that deleted snapshots' space comes back without a
	// stop; waited for below, before the store closes.
	gcDone := make(chan struct{})
	go func() { defer close(gcDone); runGC(dctx, s.replica, s.cfg.GCEvery, s.log, s.gcObserve) }()
	// AGENT_NOT_SEEN for sources that went silent.
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); s.data.RunAgentWatch(dctx, time.Minute) }()
	s.log.Info("ferry server running", "api", "https://"+s.APIAddr, "data_plane", s.DataAddr, "version", Version)

	var first error
	received := 0
	select {
	case <-ctx.Done():
	case first = <-errc:
		received = 1
	}
	s.log.Info("ferry server stopping")
	shutCtx, c2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer c2()
	if err := s.httpSrv.Shutdown(shutCtx); err != nil && first == nil {
		first = fmt.Errorf("shut down API: %w", err)
	}
	cancel()
	for ; received < 3; received++ {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	<-pitDone
	<-gcDone
	<-watchDone
	return errors.Join(first, s.Close())
}

// Close releases the metadata and replica stores.
func (s *Server) Close() error {
	var errs []error
	if s.launcher != nil {
		s.launcher.close()
		s.launcher = nil
	}
	if s.replica != nil {
		errs = append(errs, s.replica.Close())
		s.replica = nil
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
		s.store = nil
	}
	return errors.Join(errs...)
}
