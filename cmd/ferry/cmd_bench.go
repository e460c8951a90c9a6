package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/ferrymigrate/ferry/replica/storebench"
	"github.com/spf13/cobra"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure Ferry on this machine (prints figures; not a test)"}
	var o storebench.Options
	store := &cobra.Command{
		Use:   "store",
		Short: "Replica store: ingest, fold, zeros, random 4 KiB, NBD snapshot read vs qemu-img, dedup; each against its goal",
		Args:  cobra.NoArgs,
	}
	writeJSON := jsonFlag(store)
	store.RunE = func(cmd *cobra.Command, _ []string) error {
		o.Logf = stderrLogf(cmd)
		res, err := storebench.Run(cmd.Context(), o, cmd.OutOrStdout())
		if err != nil {
			return err
		}
		return writeJSON(res)
	}
	f := store.Flags()
	f.StringVar(&o.Dir, "dir", "", "directory on the disk to measure (default: the temporary directory)")
	f.Int64Var(&o.SeqBytes, "seq-bytes", 0, "bytes for the sequential measurements (default 256 MiB)")
	f.IntVar(&o.RandomWrites, "random-writes", 0, "random 4 KiB writes (default 16384)")
	f.Int64Var(&o.ImageBytes, "image-bytes", 0, "image size for the dedup measurement (default 64 MiB)")
	f.IntVar(&o.Copies, "copies", 0, "copies of the image (default 20)")
	cmd.AddCommand(store, newBenchReplicationCmd(), newBenchAllCmd(), newBenchScaleCmd(), newBenchConnectorCmd())
	return cmd
}

// jsonFlag adds --json to a bench command and returns what writes a
// result there (nothing when the flag is not given).
func jsonFlag(cmd *cobra.Command) func(v any) error {
	var path string
	cmd.Flags().StringVar(&path, "json", "", "also write the results as JSON to this file")
	return func(v any) error {
		if path == "" {
			return nil
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("encode results: %w", err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		return nil
	}
}

// stderrLogf sends a bench's progress lines to the command's stderr.
func stderrLogf(cmd *cobra.Command) func(string, ...any) {
	return func(f string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), f+"\n", a...) }
}
