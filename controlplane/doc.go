// Package controlplane serves Ferry's HTTP JSON API under /api/v1: servers,
// templates, applications, waves, jobs, API and install tokens, agent
// pairing and the audit log. It authenticates bearer tokens, checks each
// route's role, validates every request strictly, and writes an audit event
// for every mutating or denied call. State lives in a ferry.Store.
package controlplane
