package ferry

import "errors"

// Errors that callers test for with errors.Is. Stores wrap them with the
// kind and id of what was not found or in conflict.
var (
	// ErrNotFound means the object asked for does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict means the object exists already, or changed under the
	// caller.
	ErrConflict = errors.New("conflict")
	// ErrInvalid means input failed validation; the wrapping error says how.
	ErrInvalid = errors.New("invalid")

	// ErrInstallTokenRevoked means the install token was revoked.
	ErrInstallTokenRevoked = errors.New("install token revoked")
	// ErrInstallTokenExpired means the install token has expired.
	ErrInstallTokenExpired = errors.New("install token expired")
	// ErrInstallTokenUsedUp means the install token reached its use limit.
	ErrInstallTokenUsedUp = errors.New("install token used up")
)
