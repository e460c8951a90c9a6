package ferry

import "time"

// Role is what an API token may do.
type Role string

// Roles, from most to least powerful.
const (
	// RoleAdmin may do everything, including managing tokens and templates.
	RoleAdmin Role = "admin"
	// RoleOperator may act on replication and launches.
	RoleOperator Role = "operator"
	// RoleViewer may only read.
	RoleViewer Role = "viewer"
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	return r == RoleAdmin || r == RoleOperator || r == RoleViewer
}

// Allows reports whether a token with role r may use a route that needs
// role need: admin > operator > viewer.
func (r Role) Allows(need Role) bool {
	return r.rank() >= need.rank() && need.rank() > 0
}

func (r Role) rank() int {
	switch r {
	case RoleAdmin:
		return 3
	case RoleOperator:
		return 2
	case RoleViewer:
		return 1
	}
	return 0
}

// Token is an API token. Only a hash of its secret is kept; the secret is
// shown once, when the token is created.
type Token struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Role       Role      `json:"role"`
	Hash       []byte    `json:"-"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
}

// Active reports whether the token may be used at time now.
func (t *Token) Active(now time.Time) bool {
	if !t.RevokedAt.IsZero() {
		return false
	}
	return t.ExpiresAt.IsZero() || now.Before(t.ExpiresAt)
}

// InstallToken lets agents pair with the server: scoped (to an application,
// a wave or tags given to the servers it pairs), expiring, and limited in
// uses.
type InstallToken struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Hash          []byte            `json:"-"`
	ApplicationID string            `json:"application_id,omitempty"`
	WaveID        string            `json:"wave_id,omitempty"`
	Tags          map[string]string `json:"tags,omitempty"`
	MaxUses       int               `json:"max_uses"`
	Uses          int               `json:"uses"`
	CreatedAt     time.Time         `json:"created_at"`
	ExpiresAt     time.Time         `json:"expires_at"`
	RevokedAt     time.Time         `json:"revoked_at,omitzero"`
}

// Usable returns nil when the install token may pair one more agent at
// time now, and an error saying why not otherwise.
func (t *InstallToken) Usable(now time.Time) error {
	switch {
	case !t.RevokedAt.IsZero():
		return ErrInstallTokenRevoked
	case !now.Before(t.ExpiresAt):
		return ErrInstallTokenExpired
	case t.MaxUses > 0 && t.Uses >= t.MaxUses:
		return ErrInstallTokenUsedUp
	}
	return nil
}

// AuditEvent records a mutating or denied API call: who, what, on which
// target, when, from where, and how it ended.
type AuditEvent struct {
	ID       int64     `json:"id"`
	Time     time.Time `json:"time"`
	Actor    string    `json:"actor"`
	Action   string    `json:"action"`
	Target   string    `json:"target,omitempty"`
	SourceIP string    `json:"source_ip,omitempty"`
	Outcome  string    `json:"outcome"` // "success", "denied" or "error"
	Detail   string    `json:"detail,omitempty"`
}

// Audit outcomes.
const (
	OutcomeSuccess = "success"
	OutcomeDenied  = "denied"
	OutcomeError   = "error"
)
