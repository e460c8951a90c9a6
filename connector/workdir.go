package connector

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// owner is the user QEMU runs as, when that is not the connector's.
type owner struct{ uid, gid int }

// prepareWorkDir creates the run's work directory. When QEMU runs as
// another user (a libvirt domain), the directory is handed to that user:
// QEMU creates the NBD socket there and opens the fleecing images. Every
// directory above it must let that user through; the connector's own
// directories (up to its state or work root) get search permission for
// others (no listing), anything else that blocks QEMU is an error naming
// it. The returned owner is nil when QEMU runs as the connector's user.
func (s *Source) prepareWorkDir(ctx context.Context) (*owner, error) {
	if err := os.MkdirAll(s.WorkDir, 0o700); err != nil {
		return nil, err
	}
	po, ok := s.mon.(ProcessOwner)
	if !ok {
		return nil, nil
	}
	uid, gid, err := po.ProcessOwner(ctx)
	if err != nil {
		return nil, err
	}
	if uid == os.Geteuid() {
		return nil, nil
	}
	if err := os.Chown(s.WorkDir, uid, gid); err != nil {
		return nil, fmt.Errorf("work directory %s: hand it to QEMU's user %d:%d: %w", s.WorkDir, uid, gid, err)
	}
	abs, err := filepath.Abs(s.WorkDir)
	if err != nil {
		return nil, err
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return nil, err
		}
		if !canSearch(fi, uid, gid) {
			st, _ := fi.Sys().(*syscall.Stat_t)
			if !s.ownsDir(dir) || st == nil || int(st.Uid) != os.Geteuid() {
				return nil, fmt.Errorf("work directory %s: QEMU runs as uid %d gid %d and cannot enter %s (mode %v, owner %d:%d); choose a work directory it can reach (--work-dir) or let it search %s",
					s.WorkDir, uid, gid, dir, fi.Mode().Perm(), st.Uid, st.Gid, dir)
			}
			if err := os.Chmod(dir, fi.Mode().Perm()|0o001); err != nil {
				return nil, fmt.Errorf("work directory %s: let QEMU's user search %s: %w", s.WorkDir, dir, err)
			}
			s.log().Info("let QEMU's user search the connector's directory (no listing)", "dir", dir, "uid", uid)
		}
		if dir == filepath.Dir(dir) {
			break
		}
	}
	return &owner{uid, gid}, nil
}

// ownsDir says dir is one of the connector's own directories (its state
// or work root, or inside them), whose permissions it may widen.
func (s *Source) ownsDir(dir string) bool {
	for _, root := range s.roots {
		r, err := filepath.Abs(root)
		if err != nil {
			continue
		}
		if dir == r || strings.HasPrefix(dir, r+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// canSearch says whether uid/gid may enter a directory (execute bit).
func canSearch(fi os.FileInfo, uid, gid int) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	m := fi.Mode().Perm()
	switch {
	case uid == 0:
		return true
	case int(st.Uid) == uid:
		return m&0o100 != 0
	case int(st.Gid) == gid:
		return m&0o010 != 0
	}
	return m&0o001 != 0
}
