package postlaunch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry/guestagent"
)

// Status is the outcome of a check.
type Status string

// Check outcomes.
const (
	Success Status = "SUCCESS"
	Failed  Status = "FAILED"
)

// Result is the stored outcome of one check.
type Result struct {
	Check    string        `json:"check"`  // what was checked, e.g. "tcp 127.0.0.1:2222"
	Status   Status        `json:"status"` // SUCCESS or FAILED
	Output   string        `json:"output"` // the evidence: matched line, reply, or why it failed
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration"`
}

// pollInterval is how often checks retry.
const pollInterval = 100 * time.Millisecond

func finish(r Result, ok bool, output string) Result {
	r.Duration = time.Since(r.Started)
	r.Status = Failed
	if ok {
		r.Status = Success
	}
	r.Output = output
	return r
}

// WaitConsole waits until a line of the serial console log at logPath
// matches re. Output is the matching line, or on failure the reason and the
// log's last lines.
func WaitConsole(ctx context.Context, logPath string, re *regexp.Regexp) Result {
	r := Result{Check: fmt.Sprintf("console %s matches %q", logPath, re), Started: time.Now()}
	var log []byte
	var off int64
	for {
		if f, err := os.Open(logPath); err == nil {
			if _, err := f.Seek(off, io.SeekStart); err == nil {
				b, _ := io.ReadAll(f)
				off += int64(len(b))
				log = append(log, b...)
			}
			f.Close()
		}
		for _, line := range bytes.Split(log, []byte("\n")) {
			if re.Match(line) {
				return finish(r, true, string(bytes.TrimRight(line, "\r")))
			}
		}
		if len(log) > 1<<20 { // keep the tail; a marker spans one line
			i := bytes.LastIndexByte(log[:len(log)-1<<19], '\n')
			log = log[i+1:]
		}
		select {
		case <-ctx.Done():
			return finish(r, false, fmt.Sprintf("%v; console tail:\n%s", ctx.Err(), tail(log, 10)))
		case <-time.After(pollInterval):
		}
	}
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// quietWindow is how long TCPOpen watches a fresh connection: a forwarded
// port (QEMU user-mode NAT) accepts a connection even when nothing in the
// guest listens, then closes it at once.
const quietWindow = 300 * time.Millisecond

// TCPOpen waits until addr accepts a TCP connection that stays open (or
// sends data) for a moment, so that a port forward whose guest side is
// closed does not count as open. Output is the banner, if any.
func TCPOpen(ctx context.Context, addr string) Result {
	r := Result{Check: "tcp " + addr, Started: time.Now()}
	var last error
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.SetReadDeadline(time.Now().Add(quietWindow))
			buf := make([]byte, 256)
			n, rerr := conn.Read(buf)
			conn.Close()
			var ne net.Error
			switch {
			case n > 0:
				return finish(r, true, fmt.Sprintf("open; banner %q", buf[:n]))
			case errors.As(rerr, &ne) && ne.Timeout():
				return finish(r, true, "open")
			default:
				err = fmt.Errorf("connection closed at once: %v", rerr)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return finish(r, false, fmt.Sprintf("%v; last attempt: %v", ctx.Err(), last))
		case <-time.After(pollInterval):
		}
	}
}

// HTTPCheck waits until a GET of url answers with wantStatus and a body
// containing bodyContains (any body when empty). Output is the status line
// and the start of the body.
func HTTPCheck(ctx context.Context, url string, wantStatus int, bodyContains string) Result {
	r := Result{Check: fmt.Sprintf("http GET %s: %d, body contains %q", url, wantStatus, bodyContains), Started: time.Now()}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var last, lastErr string // the last answer, the last failure to get one
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return finish(r, false, fmt.Sprintf("bad request: %v", err))
		}
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := client.Do(req.WithContext(attempt))
		if err == nil {
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			snippet := string(body)
			if len(snippet) > 200 {
				snippet = snippet[:200] + "…"
			}
			last = fmt.Sprintf("%s; body %q", resp.Status, snippet)
			if rerr == nil && resp.StatusCode == wantStatus && bytes.Contains(body, []byte(bodyContains)) {
				cancel()
				return finish(r, true, last)
			}
		} else {
			lastErr = err.Error()
		}
		cancel()
		select {
		case <-ctx.Done():
			out := ctx.Err().Error()
			if last != "" {
				out += "; last answer: " + last
			}
			if lastErr != "" {
				out += "; last error: " + lastErr
			}
			return finish(r, false, out)
		case <-time.After(pollInterval):
		}
	}
}

// Check is one post-launch action of an ordered list.
type Check struct {
	Timeout time.Duration // required
	Run     func(ctx context.Context) Result
}

// Run runs checks in order, each under its own timeout, and stops after the
// first that fails. It returns the results of the checks it ran and whether
// all of them passed.
func Run(ctx context.Context, checks []Check) ([]Result, bool) {
	var out []Result
	for _, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, c.Timeout)
		r := c.Run(cctx)
		cancel()
		out = append(out, r)
		if r.Status != Success {
			return out, false
		}
	}
	return out, true
}

// maxScriptOutput bounds the output RunScript keeps, per stream.
const maxScriptOutput = 64 << 10

// RunScript runs script with /bin/sh -c in the guest through the QEMU
// guest agent that open connects to (package guestagent; via names the
// channel for the result), waiting for the agent to answer first. It
// succeeds when the script exits 0. Output is the exit code then the
// script's stdout and stderr (each cut to 64 KiB), or why it could not
// run.
func RunScript(ctx context.Context, via string, open func(context.Context) (guestagent.Agent, error), script string) Result {
	r := Result{Check: "script via guest agent " + via, Started: time.Now()}
	a, err := open(ctx)
	if err != nil {
		return finish(r, false, err.Error())
	}
	defer a.Close()
	res, err := guestagent.Exec(ctx, a, "/bin/sh", []string{"-c", script}, nil)
	if err != nil {
		return finish(r, false, err.Error())
	}
	var b strings.Builder
	if res.Signal != 0 {
		fmt.Fprintf(&b, "killed by signal %d\n", res.Signal)
	} else {
		fmt.Fprintf(&b, "exit code %d\n", res.ExitCode)
	}
	for _, s := range []struct {
		name string
		data []byte
	}{{"stdout", res.Stdout}, {"stderr", res.Stderr}} {
		if len(s.data) == 0 {
			continue
		}
		cut := ""
		if len(s.data) > maxScriptOutput {
			s.data, cut = s.data[:maxScriptOutput], " (cut)"
		}
		fmt.Fprintf(&b, "%s%s:\n%s", s.name, cut, s.data)
		if !bytes.HasSuffix(s.data, []byte("\n")) {
			b.WriteByte('\n')
		}
	}
	if res.Truncated {
		b.WriteString("(the guest agent truncated the output)\n")
	}
	return finish(r, res.Signal == 0 && res.ExitCode == 0, strings.TrimRight(b.String(), "\n"))
}
