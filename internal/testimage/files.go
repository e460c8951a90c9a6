package testimage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// RootOffset is the byte offset of the root file system (partition 2) in
// the image.
const RootOffset = (1 + bootMiB) << 20

// validGuestPath accepts absolute paths debugfs can take unquoted.
func validGuestPath(name string) bool {
	return strings.HasPrefix(name, "/") && !strings.ContainsAny(name, " \t\n\"'\\") && filepath.Clean(name) == name
}

// debugfsTarget names the root file system of disk for debugfs.
func debugfsTarget(disk string) string { return fmt.Sprintf("%s?offset=%d", disk, RootOffset) }

// WriteFile writes data to name, an absolute path in an existing directory
// of the root file system of disk (an image file or a block device holding
// one), replacing any file there, without mounting it: with debugfs
// (e2fsprogs). The file system must not be mounted. Tests use it to change
// the source between a test launch and a cutover; the guest serves files
// under /www over HTTP.
func WriteFile(ctx context.Context, disk, name string, data []byte) error {
	if !validGuestPath(name) {
		return fmt.Errorf("testimage: write %q: want a clean absolute path without spaces or quotes", name)
	}
	tmp, err := os.CreateTemp("", "ferry-testimage-file-")
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("testimage: %w", err)
	}
	tmp.Close()
	os.Chmod(tmp.Name(), 0o644)
	if strings.ContainsAny(tmp.Name(), " \t\n\"'\\") {
		return fmt.Errorf("testimage: temporary file name %q needs quoting", tmp.Name())
	}
	cmds := fmt.Sprintf("rm %s\nwrite %s %s\n", name, tmp.Name(), name)
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", "-", debugfsTarget(disk))
	cmd.Stdin = strings.NewReader(cmds)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testimage: debugfs write %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	got, err := ReadFile(ctx, disk, name)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("testimage: write %s: reads back %d bytes, wrote %d", name, len(got), len(data))
	}
	return nil
}

// ReadFile reads name from the root file system of disk with debugfs.
func ReadFile(ctx context.Context, disk, name string) ([]byte, error) {
	if !validGuestPath(name) {
		return nil, fmt.Errorf("testimage: read %q: want a clean absolute path without spaces or quotes", name)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "debugfs", "-R", "cat "+name, debugfsTarget(disk))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("testimage: debugfs cat %s: %w: %s", name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if bytes.Contains(stderr.Bytes(), []byte("File not found")) {
		return nil, fmt.Errorf("testimage: %s: %w", name, os.ErrNotExist)
	}
	return stdout.Bytes(), nil
}
