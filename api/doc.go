// Package api holds the wire types of Ferry's HTTP JSON API (/api/v1) and a
// client for it. The server, the CLI, the agent and the tests share these
// types, so they cannot drift apart; openapi.yaml in this folder describes
// the same API for everyone else, and a test keeps it true to the routes the
// server serves.
package api
