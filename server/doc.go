// Package server assembles `ferry server`: it opens the metadata store,
// loads or creates the CA and certificates, makes the first admin token,
// and runs the HTTPS API (8443) and the agents' data plane (1500) until
// its context ends, then shuts both down gracefully.
package server
