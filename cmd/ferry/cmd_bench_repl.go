package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/ferrymigrate/ferry/bench/replbench"
	"github.com/spf13/cobra"
)

// newBenchReplicationCmd is `ferry bench replication`.
func newBenchReplicationCmd() *cobra.Command {
	var (
		o       replbench.Options
		jsonOut string
	)
	cmd := &cobra.Command{
		Use:   "replication",
		Short: "Replication: initial sync vs rsync and a TLS pipe, incremental with eBPF vs rescan vs rsync (root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Logf = func(f string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), f+"\n", a...) }
			res, err := replbench.Run(cmd.Context(), o, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if jsonOut != "" {
				b, err := json.MarshalIndent(res, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
					return fmt.Errorf("write %s: %w", jsonOut, err)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", "", "working directory (default: a temporary directory)")
	f.Int64Var(&o.ImageBytes, "image-bytes", 0, "image size (default 1 GiB)")
	f.Float64Var(&o.ChangePercent, "change-percent", 0, "share of 4 KiB blocks changed for the incremental runs (default 1)")
	f.StringVar(&jsonOut, "json", "", "also write the results as JSON to this file")
	return cmd
}
