package ferry

import (
	"context"
	"time"
)

// Store keeps Ferry's metadata: servers, templates, applications, waves,
// jobs, tokens and audit events. Implementations (package sqlite, the
// embedded default, and package postgres, for several control planes) pass
// the same conformance suite in package storetest.
//
// Contract: a missing object is an error wrapping ErrNotFound; creating an
// object whose id (or a server's machine id, or a name that must be unique)
// exists is an error wrapping ErrConflict. Objects returned are the
// caller's to change; objects passed in are not kept. Timestamps are set by
// the caller, so tests are deterministic. Every method is safe for
// concurrent use.
type Store interface {
	// CreateServer adds a server.
	CreateServer(ctx context.Context, s *SourceServer) error
	// Server returns the server with id.
	Server(ctx context.Context, id string) (*SourceServer, error)
	// ServerByMachineID returns the server that an agent with that machine
	// id paired as.
	ServerByMachineID(ctx context.Context, machineID string) (*SourceServer, error)
	// UpdateServer reads the server, calls fn on it and writes the result,
	// atomically: concurrent updates of one server are serialised. If fn
	// returns an error nothing is written and that error is returned.
	UpdateServer(ctx context.Context, id string, fn func(*SourceServer) error) (*SourceServer, error)
	// ListServers returns one page of servers matching f, ordered by id, and
	// the cursor for the next page ("" on the last page).
	ListServers(ctx context.Context, f ServerFilter) ([]*SourceServer, string, error)
	// DeleteServer removes a server.
	DeleteServer(ctx context.Context, id string) error

	// CreateTemplate adds a settings template (names are unique).
	CreateTemplate(ctx context.Context, t *Template) error
	// Template returns a template by id.
	Template(ctx context.Context, id string) (*Template, error)
	// UpdateTemplate atomically changes a template, as UpdateServer does.
	UpdateTemplate(ctx context.Context, id string, fn func(*Template) error) (*Template, error)
	// ListTemplates returns every template, ordered by id.
	ListTemplates(ctx context.Context) ([]*Template, error)
	// DeleteTemplate removes a template.
	DeleteTemplate(ctx context.Context, id string) error

	// CreateApplication adds an application (names are unique).
	CreateApplication(ctx context.Context, a *Application) error
	// Application returns an application by id.
	Application(ctx context.Context, id string) (*Application, error)
	// UpdateApplication atomically changes an application.
	UpdateApplication(ctx context.Context, id string, fn func(*Application) error) (*Application, error)
	// ListApplications returns one page of applications, ordered by id.
	ListApplications(ctx context.Context, f GroupFilter) ([]*Application, string, error)
	// DeleteApplication removes an application.
	DeleteApplication(ctx context.Context, id string) error

	// CreateWave adds a wave (names are unique).
	CreateWave(ctx context.Context, w *Wave) error
	// Wave returns a wave by id.
	Wave(ctx context.Context, id string) (*Wave, error)
	// UpdateWave atomically changes a wave.
	UpdateWave(ctx context.Context, id string, fn func(*Wave) error) (*Wave, error)
	// ListWaves returns one page of waves, ordered by id.
	ListWaves(ctx context.Context, f GroupFilter) ([]*Wave, string, error)
	// DeleteWave removes a wave.
	DeleteWave(ctx context.Context, id string) error

	// CreateToken adds an API token.
	CreateToken(ctx context.Context, t *Token) error
	// Token returns an API token by id, revoked ones included.
	Token(ctx context.Context, id string) (*Token, error)
	// ListTokens returns every API token, ordered by id.
	ListTokens(ctx context.Context) ([]*Token, error)
	// RevokeToken marks a token revoked at time at; revoking twice keeps
	// the first time.
	RevokeToken(ctx context.Context, id string, at time.Time) error
	// TouchToken records that a token was used at time at.
	TouchToken(ctx context.Context, id string, at time.Time) error

	// CreateInstallToken adds an install token.
	CreateInstallToken(ctx context.Context, t *InstallToken) error
	// InstallToken returns an install token by id.
	InstallToken(ctx context.Context, id string) (*InstallToken, error)
	// ListInstallTokens returns every install token, ordered by id.
	ListInstallTokens(ctx context.Context) ([]*InstallToken, error)
	// RevokeInstallToken marks an install token revoked at time at.
	RevokeInstallToken(ctx context.Context, id string, at time.Time) error
	// UseInstallToken atomically checks that the install token is usable at
	// time now (InstallToken.Usable) and counts one use. It returns the
	// token after the use, or Usable's error (or ErrNotFound) and counts
	// nothing.
	UseInstallToken(ctx context.Context, id string, now time.Time) (*InstallToken, error)

	// CreateJob adds a job.
	CreateJob(ctx context.Context, j *Job) error
	// Job returns a job by id.
	Job(ctx context.Context, id string) (*Job, error)
	// UpdateJob atomically changes a job.
	UpdateJob(ctx context.Context, id string, fn func(*Job) error) (*Job, error)
	// ListJobs returns one page of jobs matching f, newest first.
	ListJobs(ctx context.Context, f JobFilter) ([]*Job, string, error)
	// AppendJobLog adds an entry to a job's log.
	AppendJobLog(ctx context.Context, item JobLogItem) error
	// JobLog returns a job's log in the order it was written.
	JobLog(ctx context.Context, jobID string) ([]JobLogItem, error)

	// AppendAudit records an audit event and sets its ID.
	AppendAudit(ctx context.Context, e *AuditEvent) error
	// ListAudit returns one page of audit events matching f, newest first.
	ListAudit(ctx context.Context, f AuditFilter) ([]AuditEvent, string, error)

	// Close releases the store.
	Close() error
}

// Page limits.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// ServerFilter selects servers. Zero fields match everything, except
// Archived: archived servers are listed only when asked for.
type ServerFilter struct {
	Lifecycle     []LifecycleState
	Replication   []ReplicationState
	ApplicationID string
	WaveID        string
	// Tags match when the server has every key with the given value (an
	// empty value matches any value).
	Tags map[string]string
	// Text matches a case-insensitive substring of the id or hostname.
	Text string
	// Archived selects archived servers instead of live ones.
	Archived bool
	// After is the cursor from the previous page.
	After string
	// Limit is the page size: 0 means DefaultPageSize; above MaxPageSize is
	// clamped.
	Limit int
}

// GroupFilter selects applications or waves.
type GroupFilter struct {
	WaveID   string // applications only
	Text     string // substring of id or name, case-insensitive
	Archived bool
	After    string
	Limit    int
}

// JobFilter selects jobs.
type JobFilter struct {
	SourceServerID string
	Status         JobStatus
	// After is the cursor from the previous page.
	After string
	Limit int
}

// AuditFilter selects audit events.
type AuditFilter struct {
	Actor   string
	Outcome string
	Since   time.Time
	// After is the cursor from the previous page.
	After string
	Limit int
}

// PageLimit turns a requested page size into the one to use.
func PageLimit(n int) int {
	switch {
	case n <= 0:
		return DefaultPageSize
	case n > MaxPageSize:
		return MaxPageSize
	}
	return n
}
