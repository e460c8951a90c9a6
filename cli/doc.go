// Package cli implements Ferry's command-line verbs (login, servers,
// tokens, install-tokens) on top of the API client, with aligned tables or
// JSON output. Each verb is a Run function taking an options struct, so
// tests call it without cobra; cmd/ferry only wires flags to it.
package cli
