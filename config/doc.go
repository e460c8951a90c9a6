// Package config reads the configuration of `ferry server` from a YAML
// file and FERRY_* environment variables, and says plainly what is missing
// or wrong. Command-line flags are applied on top by the command.
package config
