package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/pki"
)

// ServerProcess is a `ferry server --dev` child process on loopback, for
// the benchmarks that need the whole server (control plane, jobs, launch
// targets) rather than the in-process data plane of [New].
type ServerProcess struct {
	// APIURL is the control plane's https://127.0.0.1:PORT; DataAddr the
	// data plane's host:port.
	APIURL, DataAddr string
	// Token is the dev server's admin token, Fingerprint its CA's SHA-256
	// fingerprint (hex), both read from its banner.
	Token, Fingerprint string
	// DataDir is the server's --data directory; LogPath its stderr.
	DataDir, LogPath string

	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
}

var (
	tokenRe = regexp.MustCompile(`fyt_[a-z0-9_]+`)
	fpRe    = regexp.MustCompile(`(?m)^\s+([0-9a-f]{64})\s*$`)
)

// FreeAddr returns a loopback address with a port nothing listens on now.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// StartServer starts bin as `ferry server --dev` on loopback with its data
// in dir/data and its log in dir/server.log, and waits for its banner
// (admin token, CA fingerprint) and for its API to answer. Stop ends it.
// extra are more arguments for the server (such as --cpuprofile FILE).
func StartServer(ctx context.Context, bin, dir string, extra ...string) (*ServerProcess, error) {
	apiAddr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	dp, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("server directory: %w", err)
	}
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		return nil, fmt.Errorf("server log: %w", err)
	}
	s := &ServerProcess{APIURL: "https://" + apiAddr, DataAddr: dp, DataDir: filepath.Join(dir, "data"), LogPath: logf.Name(), done: make(chan struct{})}
	args := append([]string{"server", "--dev", "--data", s.DataDir, "--listen", apiAddr, "--data-listen", dp, "--advertise", "127.0.0.1"}, extra...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stderr = logf
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("server output: %w", err)
	}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s server: %w", bin, err)
	}
	banner := make(chan string, 1)
	go func() {
		var all strings.Builder
		sent := false
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			if !sent && fpRe.MatchString(all.String()) && tokenRe.MatchString(all.String()) {
				banner <- all.String()
				sent = true
			}
		}
		if !sent {
			banner <- all.String()
		}
		_ = s.cmd.Wait()
		logf.Close()
		close(s.done)
	}()
	fail := func(err error) (*ServerProcess, error) {
		s.Stop()
		return nil, fmt.Errorf("%w (server log: %s)", err, s.LogTail())
	}
	select {
	case out := <-banner:
		s.Token = tokenRe.FindString(out)
		if m := fpRe.FindStringSubmatch(out); m != nil {
			s.Fingerprint = m[1]
		}
		if s.Token == "" || s.Fingerprint == "" {
			return fail(errors.New("the server printed no admin token and CA fingerprint"))
		}
	case <-time.After(60 * time.Second):
		return fail(errors.New("the server printed no banner within 60 s"))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	// Wait until the API answers over TLS (a bare TCP probe would log a
	// handshake error in the server).
	c, err := s.Client("")
	if err != nil {
		return fail(err)
	}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Health(hctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fail(fmt.Errorf("the server's API on %s never answered: %w", apiAddr, err))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s, nil
}

// Client is an API client of the server pinned to its CA, sending token
// ("" for none; s.Token for the admin).
func (s *ServerProcess) Client(token string) (*api.Client, error) {
	pin, err := pki.ParseFingerprint(s.Fingerprint)
	if err != nil {
		return nil, fmt.Errorf("server CA fingerprint: %w", err)
	}
	return api.NewClient(s.APIURL, token, pki.ClientTLSConfig(pin, nil))
}

// PID is the server's process id.
func (s *ServerProcess) PID() int { return s.cmd.Process.Pid }

// Stop ends the server with SIGTERM, then SIGKILL after 30 s; stopping
// a stopped server does nothing.
func (s *ServerProcess) Stop() {
	if !s.Alive() {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Alive reports whether the server process has not exited.
func (s *ServerProcess) Alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// LogTail returns the last 2,000 bytes of the server's log.
func (s *ServerProcess) LogTail() string {
	b, _ := os.ReadFile(s.LogPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}
