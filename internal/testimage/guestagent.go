package testimage

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
)

// guestAgent is Debian's qemu-ga, unpacked from its package, and the
// host's copies of the shared libraries it needs (with their own
// dependencies): Debian builds it dynamically linked, and the test image's
// root file system has no other libraries.
type guestAgent struct {
	binary string   // unpacked usr/sbin/qemu-ga
	libs   []string // host paths, the dynamic loader first
}

// libDirs are searched, in order, for the libraries qemu-ga needs.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"}

// findDeb returns the newest package in dir matching glob, downloading pkg
// there with apt-get download when there is none.
func findDeb(ctx context.Context, dir, glob, pkg string) (string, error) {
	find := func() string {
		m, _ := filepath.Glob(filepath.Join(dir, glob))
		sort.Strings(m)
		if len(m) == 0 {
			return ""
		}
		return m[len(m)-1]
	}
	if f := find(); f != "" {
		return f, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("testimage: apt-get download %s: %v: %s: %w", pkg, err, out, ErrMissingTool)
	}
	if f := find(); f != "" {
		return f, nil
	}
	return "", fmt.Errorf("testimage: apt-get download %s left no package in %s: %w", pkg, dir, ErrMissingTool)
}

// unpackGuestAgent unpacks qemu-ga from deb into a temporary directory
// (the caller removes it: [guestAgent.dir]) and resolves its libraries on
// the host.
func unpackGuestAgent(ctx context.Context, deb string) (*guestAgent, error) {
	dir, err := os.MkdirTemp("", "ferry-qga-")
	if err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	if err := run(ctx, "dpkg-deb", "-x", deb, dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	qga := &guestAgent{binary: filepath.Join(dir, "usr", "sbin", "qemu-ga")}
	libs, err := sharedLibs(qga.binary)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	qga.libs = libs
	return qga, nil
}

// dir is the temporary directory the package was unpacked in.
func (g *guestAgent) dir() string { return filepath.Dir(filepath.Dir(filepath.Dir(g.binary))) }

// sharedLibs returns the ELF interpreter and the transitive DT_NEEDED
// libraries of bin, found in libDirs.
func sharedLibs(bin string) ([]string, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	var interp string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				f.Close()
				return nil, fmt.Errorf("testimage: read interpreter of %s: %w", bin, err)
			}
			interp = string(b[:len(b)-1]) // NUL-terminated
		}
	}
	f.Close()
	if interp == "" {
		return nil, fmt.Errorf("testimage: %s names no ELF interpreter", bin)
	}
	out := []string{interp}
	seen := map[string]bool{}
	queue := []string{bin}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		ef, err := elf.Open(cur)
		if err != nil {
			return nil, fmt.Errorf("testimage: %w", err)
		}
		needed, err := ef.ImportedLibraries()
		ef.Close()
		if err != nil {
			return nil, fmt.Errorf("testimage: libraries of %s: %w", cur, err)
		}
		for _, n := range needed {
			if seen[n] {
				continue
			}
			seen[n] = true
			path := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, n)); err == nil {
					path = filepath.Join(d, n)
					break
				}
			}
			if path == "" {
				return nil, fmt.Errorf("testimage: qemu-ga needs %s, not installed on this host (Debian package of qemu-guest-agent's dependencies): %w", n, ErrMissingTool)
			}
			if path != interp && filepath.Base(path) != filepath.Base(interp) {
				out = append(out, path)
			}
			queue = append(queue, path)
		}
	}
	return out, nil
}

// install copies qemu-ga to root/sbin and its libraries to the same paths
// under root (the loader first, at the path the binary names).
func (g *guestAgent) install(root string) error {
	if err := copyFileMode(g.binary, filepath.Join(root, "sbin", "qemu-ga"), 0o755); err != nil {
		return err
	}
	for _, lib := range g.libs {
		dst := filepath.Join(root, lib)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("testimage: %w", err)
		}
		if err := copyFileMode(lib, dst, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// copyFileMode copies src (following symlinks) to dst with mode perm.
func copyFileMode(src, dst string, perm os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	if err := os.WriteFile(dst, data, perm); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	return nil
}
