package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/auth"
	"github.com/ferrymigrate/ferry/jobs"
)

// Signer issues agent client certificates; *pki.CA is one.
type Signer interface {
	// SignAgentCSR checks a PEM CSR and returns a PEM client certificate
	// for serverID and its serial.
	SignAgentCSR(csrPEM []byte, serverID string, validity time.Duration) ([]byte, *big.Int, error)
	// CertPEM returns the CA certificate, PEM.
	CertPEM() []byte
}

// Server is the control plane's API. Fill in the fields, then serve
// Handler. Store and Signer are required.
type Server struct {
	Store  ferry.Store
	Signer Signer
	// Snapshots takes and lists snapshots; nil answers with 503.
	Snapshots Snapshots
	// Jobs runs launches; nil answers launch routes with 503.
	Jobs *jobs.Runner
	// DataPlaneAddr is the host:port agents send data to, told to them at
	// pairing.
	DataPlaneAddr string
	// Version is reported by /health.
	Version string
	// Logger receives operational logs; never secrets.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// AgentCertValidity is how long agent certificates last (default one
	// year).
	AgentCertValidity time.Duration
	// FailedAuthLimit is how many failed sign-ins (bad API or install
	// tokens) one address may make in a minute before it is refused with
	// 429 for the rest of that minute; 0 means 20.
	FailedAuthLimit int
	// LagThreshold is the replication lag above which a server makes its
	// application and wave LAGGING; 0 means DefaultLagThreshold.
	LagThreshold time.Duration
	// Observe, if set, is told of every API call when it ends: method,
	// route pattern (e.g. /servers/{id}), status and duration. Package
	// metrics provides one.
	Observe func(method, route string, status int, elapsed time.Duration)

	// EventPollInterval is how often an event stream reads the store; 0
	// means DefaultEventPollInterval.
	EventPollInterval time.Duration
	// EventStreamMaxAge ends each event stream after this long, so a
	// revoked or expired token stops receiving; clients reconnect and are
	// authenticated again. 0 means DefaultEventStreamMaxAge.
	EventStreamMaxAge time.Duration

	// DataPlane reports agents' traffic and sessions; nil leaves
	// throughput to sync progress and the diagnosis without staging
	// figures.
	DataPlane DataPlane
	// Usage reports the staging store's use per disk; nil answers GET
	// /usage without staging figures.
	Usage StagingUsage
	// Replicas deletes a deleted server's replica; nil deletes only the
	// record.
	Replicas Replicas
	// HistoryInterval is how often RunHistory samples; 0 means
	// DefaultHistoryInterval.
	HistoryInterval time.Duration
	// HistorySamples is how many samples are kept per server; 0 means
	// DefaultHistorySamples.
	HistorySamples int
	// Started is when bytes-sent counting began (the data plane's start).
	Started time.Time

	limiter *failLimiter
	history historyBook
	// touching holds the ids of tokens whose last-used time is being
	// written, so that a burst of calls with one token writes it once.
	touching sync.Map
	usage    usageCache
	imports  importHistory
	streams  atomic.Int64 // open event streams

	closeMu sync.Mutex
	closing chan struct{} // guarded by closeMu; closed by CloseStreams
}

// Actor kinds written into audit events.
const (
	actorAnonymous = "anonymous"
)

// caller is who made a request.
type caller struct {
	token *ferry.Token // nil when unauthenticated
	actor string       // audit name
	ip    string
	// detail, set by a handler, goes into the audit event of a successful
	// call.
	detail string
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now().UTC()
	}
	return time.Now().UTC()
}

func (s *Server) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Handler returns the HTTP handler serving /api/v1.
func (s *Server) Handler() http.Handler {
	s.init()
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		mux.Handle(rt.method+" "+APIPrefix+rt.path, s.wrap(rt))
	}
	mux.HandleFunc(APIPrefix+"/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, apiErr(http.StatusNotFound, api.CodeNotFound, "no API route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// APIPrefix is where the API is served.
const APIPrefix = "/api/v1"

type handlerFunc func(w http.ResponseWriter, r *http.Request, c *caller) error

// route is one API endpoint: the single place that says who may call it
// and how it is audited.
type route struct {
	method string
	path   string     // under APIPrefix, ServeMux pattern syntax
	role   ferry.Role // "" for public routes
	action string     // audit action name
	h      handlerFunc
}

// statusWriter remembers the status a handler sent, for the audit log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection, to flush
// event streams.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (s *Server) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		w := &statusWriter{ResponseWriter: rw}
		c := &caller{actor: actorAnonymous, ip: clientIP(r)}
		var detail string
		err := s.authorize(r, rt, c)
		if err == nil {
			err = rt.h(w, r, c)
			detail = c.detail
		}
		if err != nil {
			ae := toAPIError(err)
			if ae.Status >= 500 {
				s.log().Error("api call failed", "method", r.Method, "path", r.URL.Path, "action", rt.action, "err", err)
			}
			detail = ae.Message
			writeJSON(w, ae.Status, ae)
		}
		mutating := r.Method != http.MethodGet && r.Method != http.MethodHead
		denied := w.status == http.StatusUnauthorized || w.status == http.StatusForbidden || w.status == http.StatusTooManyRequests
		if mutating || denied {
			s.audit(r.Context(), c, rt.action, auditTarget(r), w.status, detail)
		}
		if s.Observe != nil && rt.path != "" {
			s.Observe(r.Method, rt.path, w.status, time.Since(start))
		}
	})
}

// RequireRole guards a handler outside the API (such as /metrics) with the
// API's bearer-token authentication: callers need at least role, and
// refusals are answered and audited as for API routes, under action.
func (s *Server) RequireRole(role ferry.Role, action string, h http.Handler) http.Handler {
	s.init()
	return s.wrap(route{method: "", path: "", role: role, action: action, h: func(w http.ResponseWriter, r *http.Request, _ *caller) error {
		h.ServeHTTP(w, r)
		return nil
	}})
}

// init prepares what Handler and RequireRole share; they are called while
// the server is being set up, before it serves.
func (s *Server) init() {
	if s.limiter == nil {
		n := s.FailedAuthLimit
		if n <= 0 {
			n = 20
		}
		s.limiter = newFailLimiter(n, time.Minute)
	}
}

// authorize authenticates the bearer token and checks the route's role.
func (s *Server) authorize(r *http.Request, rt route, c *caller) error {
	if rt.role == "" {
		return nil
	}
	if s.limiter.blocked(c.ip, s.now()) {
		return apiErr(http.StatusTooManyRequests, api.CodeRateLimited, "too many failed sign-ins from %s; wait a minute", c.ip)
	}
	h := r.Header.Get("Authorization")
	plain, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || plain == "" {
		s.limiter.fail(c.ip, s.now())
		return apiErr(http.StatusUnauthorized, api.CodeUnauthorized, "missing bearer token: send Authorization: Bearer <token>")
	}
	id, secret, err := auth.Parse(auth.APITokenPrefix, plain)
	if err != nil {
		s.limiter.fail(c.ip, s.now())
		return apiErr(http.StatusUnauthorized, api.CodeUnauthorized, "invalid API token: %v", err)
	}
	c.actor = "token:" + id
	tok, err := s.Store.Token(r.Context(), id)
	if err != nil || !auth.Check(tok.Hash, secret) {
		if err != nil && !isNotFound(err) {
			return err
		}
		s.limiter.fail(c.ip, s.now())
		return apiErr(http.StatusUnauthorized, api.CodeUnauthorized, "invalid API token")
	}
	now := s.now()
	if !tok.Active(now) {
		s.limiter.fail(c.ip, now)
		// Say which: a dashboard left open past its token's expiry asks
		// the user to sign in again rather than to find out what broke.
		if tok.RevokedAt.IsZero() {
			return apiErr(http.StatusUnauthorized, api.CodeTokenExpired, "session expired: API token %s expired at %s; sign in again with a new token",
				id, tok.ExpiresAt.UTC().Format(time.RFC3339))
		}
		return apiErr(http.StatusUnauthorized, api.CodeUnauthorized, "API token %s was revoked at %s; sign in with another token",
			id, tok.RevokedAt.UTC().Format(time.RFC3339))
	}
	c.token = tok
	c.actor = "token:" + id + "(" + tok.Name + ")"
	if tok.LastUsedAt.IsZero() || now.Sub(tok.LastUsedAt) > time.Minute {
		s.touchToken(id, now)
	}
	if !tok.Role.Allows(rt.role) {
		return apiErr(http.StatusForbidden, api.CodeForbidden, "role %s may not %s (needs %s)", tok.Role, rt.action, rt.role)
	}
	return nil
}

// touchToken records a token's use in the background: a read must not
// wait for the metadata store's writer, which a server with thousands of
// agents keeps busy with their records (the last-used time is a
// minute-grained hint, not an audit record).
func (s *Server) touchToken(id string, now time.Time) {
	if _, busy := s.touching.LoadOrStore(id, true); busy {
		return
	}
	go func() {
		defer s.touching.Delete(id)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.Store.TouchToken(ctx, id, now); err != nil {
			s.log().Warn("record token use", "token", id, "err", err)
		}
	}()
}

func (s *Server) audit(ctx context.Context, c *caller, action, target string, status int, detail string) {
	outcome := ferry.OutcomeSuccess
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusTooManyRequests:
		outcome = ferry.OutcomeDenied
	case status >= 400:
		outcome = ferry.OutcomeError
	}
	e := &ferry.AuditEvent{
		Time: s.now(), Actor: c.actor, Action: action, Target: target,
		SourceIP: c.ip, Outcome: outcome, Detail: detail,
	}
	// The request may have been cancelled; the audit record must still be
	// written.
	ctx = context.WithoutCancel(ctx)
	if err := s.Store.AppendAudit(ctx, e); err != nil {
		s.log().Error("write audit event", "action", action, "err", err)
	}
}

func auditTarget(r *http.Request) string {
	if id := r.PathValue("id"); id != "" {
		return id
	}
	return ""
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// newID returns prefix-<17 hex digits>, the shape MGN gives its ids.
func newID(prefix string) string {
	var b [9]byte
	// Since Go 1.24 crypto/rand.Read never fails: it aborts the program
	// if the OS has no randomness, which nothing here could recover from.
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])[:17]
}
