package main

import (
	"fmt"
	"os"
	"os/exec"

	"github.com/ferrymigrate/ferry/internal/testimage"
	"github.com/spf13/cobra"
)

// newDevCmd holds helpers for the demo and development: not for
// production use, hidden from the help.
func newDevCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "Development helpers (demo disks)", Hidden: true}
	var out string
	disk := &cobra.Command{
		Use:   "test-disk",
		Short: "Write a small bootable Linux disk (Debian's kernel, busybox, SYSLINUX) that prints a boot marker and serves HTTP on port 80",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			img, err := testimage.Build(cmd.Context(), testimage.Options{})
			if err != nil {
				return err
			}
			if b, err := exec.CommandContext(cmd.Context(), "cp", "--sparse=always", img.Path, out).CombinedOutput(); err != nil {
				return fmt.Errorf("copy the disk to %s: %v: %s", out, err, b)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Wrote %s (%d MiB, kernel %s): boot marker %q, HTTP on port %d\n", out, img.Size>>20, img.KernelVersion, testimage.BootMarker, testimage.HTTPPort)
			return nil
		},
	}
	disk.Flags().StringVarP(&out, "output", "o", "", "file to write (required)")
	_ = disk.MarkFlagRequired("output")
	write := &cobra.Command{
		Use:   "write-file DISK GUEST_PATH LOCAL_FILE",
		Short: "Replace a file on a test disk's root file system (with debugfs, without mounting)",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[2])
			if err != nil {
				return err
			}
			return testimage.WriteFile(cmd.Context(), args[0], args[1], data)
		},
	}
	cmd.AddCommand(disk, write)
	return cmd
}
