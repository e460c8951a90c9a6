package nbd

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

var exportFormats = []string{"raw", "qcow2", "vmdk"}

// ExportFormats returns the image formats [Export] writes: raw, qcow2 and
// vmdk.
func ExportFormats() []string { return slices.Clone(exportFormats) }

// exportName is the export Export serves on its private socket.
const exportName = "snapshot"

// Export writes dev to the image file dst in format ("raw", "qcow2" or
// "vmdk"), sparse where the device reads as zeros. It serves dev on a
// private unix socket and runs qemu-img convert against it, so qemu-img
// (package qemu-utils) must be on PATH.
//
// The image is written to a temporary file beside dst, synced and renamed
// over dst, so dst appears only when complete; dst must be a regular file
// or not exist. Cancelling ctx stops the copy. Errors name the step that
// failed and include qemu-img's message and any device read error. A
// device whose size is not a multiple of 512 bytes is padded with zeros to
// the next multiple, as qemu-img pads every NBD export.
//
// Export refuses an unknown format with an error listing [ExportFormats].
func Export(ctx context.Context, dev Device, format, dst string) (err error) {
	if !slices.Contains(exportFormats, format) {
		return fmt.Errorf("nbd: export to %s: unsupported format %q: use one of %s", dst, format, strings.Join(exportFormats, ", "))
	}
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		return fmt.Errorf("nbd: export to %s: %w: install qemu-utils", dst, err)
	}
	if fi, err := os.Stat(dst); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("nbd: export to %s: destination exists and is not a regular file", dst)
	}

	sockDir, err := os.MkdirTemp(socketTempDir(), "ferry-nbd-")
	if err != nil {
		return fmt.Errorf("nbd: export to %s: create socket directory: %w", dst, err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("nbd: export to %s: listen on %s: %w", dst, sock, err)
	}

	rec := &readErrorRecorder{Device: dev}
	var served Device = rec
	if x, ok := dev.(Extenter); ok {
		served = &recordingExtenter{readErrorRecorder: rec, x: x}
	}
	srv := &Server{Lookup: func(name string) (Device, error) {
		if name != exportName {
			return nil, fmt.Errorf("export %q: %w", name, ErrUnknownExport)
		}
		return served, nil
	}}
	serveCtx, stopServing := context.WithCancel(ctx)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(serveCtx, l) }()
	defer func() {
		stopServing()
		if serr := <-serveErr; serr != nil && err == nil {
			err = fmt.Errorf("nbd: export to %s: serve: %w", dst, serr)
		}
	}()

	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*.partial")
	if err != nil {
		return fmt.Errorf("nbd: export to %s: create temporary file: %w", dst, err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer func() {
		if err != nil {
			os.Remove(tmpName)
		}
	}()

	src := (&url.URL{
		Scheme:   "nbd+unix",
		Path:     "/" + exportName,
		RawQuery: url.Values{"socket": {sock}}.Encode(),
	}).String()
	stderr := &boundedBuffer{max: 8 << 10}
	cmd := exec.CommandContext(ctx, qemuImg, "convert", "-f", "raw", "-O", format, src, tmpName)
	cmd.Stderr = stderr
	cmd.Stdout = stderr
	if runErr := cmd.Run(); runErr != nil {
		msg := strings.TrimSpace(stderr.String())
		if rerr := rec.err(); rerr != nil {
			return fmt.Errorf("nbd: export to %s: qemu-img convert: %w: %s (device: %w)", dst, runErr, msg, rerr)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("nbd: export to %s: %w", dst, ctx.Err())
		}
		return fmt.Errorf("nbd: export to %s: qemu-img convert: %w: %s", dst, runErr, msg)
	}
	if rerr := rec.err(); rerr != nil {
		// qemu-img reported success, but a read failed: never trust it.
		return fmt.Errorf("nbd: export to %s: read device: %w", dst, rerr)
	}
	if err := syncFile(tmpName); err != nil {
		return fmt.Errorf("nbd: export to %s: %w", dst, err)
	}
	if err := os.Rename(tmpName, dst); err != nil {
		return fmt.Errorf("nbd: export to %s: %w", dst, err)
	}
	if err := syncFile(filepath.Dir(dst)); err != nil {
		return fmt.Errorf("nbd: export to %s: %w", dst, err)
	}
	return nil
}

// socketTempDir picks a directory for the socket whose path fits the
// 108-byte limit of unix socket addresses.
func socketTempDir() string {
	if d := os.TempDir(); len(d) < 64 {
		return d
	}
	return "/tmp"
}

func syncFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

// readErrorRecorder remembers the first read error of a device.
type readErrorRecorder struct {
	Device
	mu    sync.Mutex
	first error // guarded by mu
}

func (r *readErrorRecorder) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.Device.ReadAt(p, off)
	if n < len(p) && err != nil {
		r.record(fmt.Errorf("read %d bytes at offset %d: %w", len(p), off, err))
	}
	return n, err
}

func (r *readErrorRecorder) record(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.first == nil {
		r.first = err
	}
}

func (r *readErrorRecorder) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.first
}

// recordingExtenter is a readErrorRecorder that passes extents through.
type recordingExtenter struct {
	*readErrorRecorder
	x Extenter
}

func (r *recordingExtenter) Extents(off, length int64) ([]Extent, error) {
	es, err := r.x.Extents(off, length)
	if err != nil {
		r.record(fmt.Errorf("extents at offset %d: %w", off, err))
	}
	return es, err
}

// boundedBuffer keeps the first max bytes written to it.
type boundedBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (w *boundedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if room := w.max - len(w.b); room > 0 {
		w.b = append(w.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (w *boundedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.b)
}

var (
	_ io.Writer = (*boundedBuffer)(nil)
	_ Extenter  = (*recordingExtenter)(nil)
)
