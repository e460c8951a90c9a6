package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/ferrymigrate/ferry/bench/scale"
	"github.com/spf13/cobra"
)

// newBenchScaleCmd is `ferry bench scale`.
func newBenchScaleCmd() *cobra.Command {
	var (
		o       scale.Options
		agents  string
		jsonOut string
	)
	cmd := &cobra.Command{
		Use:   "scale",
		Short: "Many simulated agents (real pairing, TLS and protocol; virtual disks) against one ferry server: RSS, CPU, ack and list latency",
		Long: `Start 'ferry server --dev' as its own process, pair simulated agents with an
install token, connect each over mutual TLS, sync a small virtual disk that is
mostly zeros, then write a few KB/s per agent and measure the server's RSS and
CPU (from /proc), the time from WRITE to durable ACK, and the filtered server
list's latency. One fresh server per agent count. Raises the open-file limit
(root can raise the hard limit too).`,
		Example: "  ferry bench scale --agents 1000,3000,10000 --json scale.json\n  ferry bench scale --quick",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("agents") {
				n, err := scale.ParseAgents(agents)
				if err != nil {
					return fmt.Errorf("--%w", err)
				}
				o.Agents = n
			}
			o.Logf = func(f string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), f+"\n", a...) }
			res, err := scale.Run(cmd.Context(), o, cmd.OutOrStdout())
			if res != nil && jsonOut != "" {
				b, jerr := json.MarshalIndent(res, "", "  ")
				if jerr != nil {
					return jerr
				}
				if werr := os.WriteFile(jsonOut, append(b, '\n'), 0o644); werr != nil {
					return fmt.Errorf("write %s: %w", jsonOut, werr)
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&agents, "agents", "1000,3000,10000", "agent counts to measure, comma-separated (one fresh server each)")
	f.BoolVar(&o.Quick, "quick", false, "200 and 1000 agents (unless --agents), 15 s window, 5 s warm-up")
	f.DurationVar(&o.Steady, "steady", 0, "measuring window (default 60s; --quick 15s)")
	f.DurationVar(&o.Warmup, "warmup", 0, "writes before the window (default 15s; --quick 5s)")
	f.Int64Var(&o.DiskBytes, "disk-bytes", 0, "virtual disk size per agent (default 64 MiB)")
	f.Int64Var(&o.DataBytes, "data-bytes", 0, "non-zero data at the start of each disk (default 64 KiB)")
	f.Int64Var(&o.WriteBytesPerSec, "rate", 0, "mean write rate per agent after the sync, bytes/s (default 4096)")
	f.StringVar(&o.Pattern, "pattern", "", "where writes land: log (appends to a log, some metadata rewrites; default) or random (anywhere on the disk)")
	f.IntVar(&o.PairWorkers, "pair-workers", 0, "agents pairing at once (default 32)")
	f.IntVar(&o.ConnectWorkers, "connect-workers", 0, "agents connecting and syncing at once (default 64)")
	f.StringVar(&o.Dir, "dir", "", "directory for the servers' data (default: a temporary directory)")
	f.StringVar(&o.ServerCPUProfile, "server-cpuprofile", "", "write each run's server CPU profile to `FILE` (the agent count inserted before the extension)")
	f.StringVar(&jsonOut, "json", "", "also write the results as JSON to this file")
	return cmd
}
