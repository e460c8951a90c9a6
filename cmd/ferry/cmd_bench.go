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
	var (
		o       storebench.Options
		jsonOut string
	)
	store := &cobra.Command{
		Use:   "store",
		Short: "Replica store: ingest, fold, zeros, random 4 KiB, NBD snapshot read vs qemu-img, dedup; each against its goal",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Logf = func(f string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), f+"\n", a...) }
			res, err := storebench.Run(cmd.Context(), o, cmd.OutOrStdout())
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
	f := store.Flags()
	f.StringVar(&o.Dir, "dir", "", "directory on the disk to measure (default: the temporary directory)")
	f.Int64Var(&o.SeqBytes, "seq-bytes", 0, "bytes for the sequential measurements (default 256 MiB)")
	f.IntVar(&o.RandomWrites, "random-writes", 0, "random 4 KiB writes (default 16384)")
	f.Int64Var(&o.ImageBytes, "image-bytes", 0, "image size for the dedup measurement (default 64 MiB)")
	f.IntVar(&o.Copies, "copies", 0, "copies of the image (default 20)")
	f.StringVar(&jsonOut, "json", "", "also write the results as JSON to this file")
	cmd.AddCommand(store)
	cmd.AddCommand(newBenchReplicationCmd())
	cmd.AddCommand(newBenchScaleCmd())
	return cmd
}
