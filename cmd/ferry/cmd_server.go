package main

import (
	"log/slog"
	"os"

	"github.com/ferrymigrate/ferry/config"
	"github.com/ferrymigrate/ferry/server"
	"github.com/spf13/cobra"
)

func newServerCmd() *cobra.Command {
	var (
		cfgFile string
		dev     bool
		flags   = map[string]*string{}
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane and replication server",
		Long: `Run the control plane (HTTPS API on :8443) and the replication server (agents on :1500).

With --dev everything is embedded and created on first start in --data: a CA and
server certificate, an admin API token (printed once), and the SQLite metadata
store. Without --dev, every setting comes from flags, FERRY_* environment
variables or --config, and a missing one is a start-up error.`,
		Example: "  ferry server --dev --data ./ferry-data",
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg config.Server
			if cfgFile != "" {
				var err error
				if cfg, err = config.Load(cfgFile); err != nil {
					return err
				}
			}
			cfg.ApplyEnv(os.Getenv)
			if cmd.Flags().Changed("dev") {
				cfg.Dev = dev
			}
			for key, v := range flags {
				if cmd.Flags().Changed(flagName(key)) {
					if err := cfg.Set(key, *v); err != nil {
						return err
					}
				}
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			s, err := server.Start(cmd.Context(), cfg, log, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			return s.Serve(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&cfgFile, "config", "", "YAML configuration file")
	cmd.Flags().BoolVar(&dev, "dev", false, "development mode: create everything needed in --data on first start")
	usage := map[string]string{
		"data_dir":             "data directory (metadata, keys, replicas)",
		"listen":               "API and dashboard address (default :8443)",
		"data_listen":          "agent data-plane address (default :1500)",
		"database":             "metadata store: sqlite:PATH or postgres://URL",
		"ca_cert":              "CA certificate PEM file",
		"ca_key":               "CA private key PEM file",
		"tls_cert":             "server certificate PEM file",
		"tls_key":              "server private key PEM file",
		"advertise":            "host name agents reach this server by",
		"qemu_binary":          "QEMU the qemu launch target runs (default qemu-system-x86_64 on PATH)",
		"gc_interval":          "how often the replica store is garbage-collected while the server runs (default 6h; off: never)",
		"unstable_drops":       "unplanned drops of an agent's connection within unstable_window that make UNSTABLE_NETWORK (default 3)",
		"unstable_window":      "the time unstable_drops are counted in, and a session must stay up to clear it (default 10m)",
		"bulk_credit_pool_mib": "write credit (MiB) beyond 16 MiB per agent that agents copying whole disks share (default 1024; 0: off)",
		"bulk_credit_mib":      "write credit (MiB) of one agent copying whole disks, from the pool (16-1024, default 64)",
		"agent_cert_validity":  "how long agent certificates last; agents renew with a third left (24h to 87600h, default 8760h)",
	}
	for key, u := range usage {
		v := new(string)
		flags[key] = v
		cmd.Flags().StringVar(v, flagName(key), "", u+" ["+config.EnvVars[key]+"]")
	}
	return cmd
}

// flagName maps a setting to its flag: data_dir is --data, others swap _
// for -.
func flagName(key string) string {
	if key == "data_dir" {
		return "data"
	}
	b := []byte(key)
	for i, c := range b {
		if c == '_' {
			b[i] = '-'
		}
	}
	return string(b)
}
