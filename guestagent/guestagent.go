// Package guestagent runs commands in a guest through the QEMU guest agent
// (qemu-ga), over the host end of the guest's virtio-serial channel
// org.qemu.guest_agent.0: a unix socket QEMU listens on (Open), or, for a
// libvirt domain, libvirt's own agent connection (Via): libvirtd connects
// to that channel itself once the guest opens it, and the socket takes one
// client at a time.
//
// The protocol is QMP-like JSON, one command at a time: guest-sync-delimited
// resynchronises the stream (the guest agent may hold a half-read command
// of an earlier client), guest-exec starts a process with its output
// captured, guest-exec-status polls it until it exits. See
// https://qemu.readthedocs.io/en/latest/interop/qemu-ga-ref.html.
//
// Requires qemu-ga running in the guest (Debian: qemu-guest-agent).
package guestagent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// ErrNoAgent is wrapped by errors when no guest agent answered before the
// context ended: the guest has not booted yet, or runs none.
var ErrNoAgent = errors.New("guest agent not answering")

// pollInterval is how often Exec asks whether the process has exited, and
// how long one sync attempt waits for the agent.
const (
	pollInterval = 100 * time.Millisecond
	syncTimeout  = 2 * time.Second
)

// ExecResult is the outcome of a process run in the guest.
type ExecResult struct {
	ExitCode int
	Signal   int    // the signal that ended it, 0 if it exited
	Stdout   []byte // as much as the agent captured (qemu-ga keeps up to 16 MiB)
	Stderr   []byte
	// Truncated says the agent dropped output beyond its limit.
	Truncated bool
}

// Agent is a channel to a guest's agent, one command at a time.
type Agent interface {
	// Call runs cmd with args and decodes the answer's "return" into out
	// (nil: ignore it); an "error" answer is an error.
	Call(ctx context.Context, cmd string, args, out any) error
	// Close releases the channel.
	Close() error
}

// conn is one connection to the agent's socket.
type conn struct {
	sock string
	c    net.Conn
	rd   *bufio.Reader
}

// Open connects to the agent on the host socket sock and synchronises
// with it, retrying until ctx ends (the error then wraps ErrNoAgent): the
// socket accepts connections as soon as QEMU runs, long before the
// guest's agent reads from its end.
func Open(ctx context.Context, sock string) (Agent, error) {
	return connect(ctx, sock)
}

// CommandFunc runs one agent command given as JSON and returns the
// agent's JSON answer, as libvirt's virDomainQemuAgentCommand does.
type CommandFunc func(ctx context.Context, cmd string) (string, error)

// Via is an Agent that runs each command through f. Calls fail (and Exec
// retries) until the guest's agent is up.
func Via(f CommandFunc) Agent { return funcAgent(f) }

type funcAgent CommandFunc

func (f funcAgent) Call(ctx context.Context, cmd string, args, out any) error {
	req, err := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
	if err != nil {
		return err
	}
	ans, err := f(ctx, string(req))
	if err != nil {
		return err
	}
	return decodeAnswer([]byte(ans), out)
}

func (funcAgent) Close() error { return nil }

// Wait retries guest-ping until the agent answers or ctx ends (the error
// then wraps ErrNoAgent).
func Wait(ctx context.Context, a Agent) error {
	for {
		err := a.Call(ctx, "guest-ping", map[string]any{}, nil)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v (last attempt: %v)", ErrNoAgent, ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
}

// Exec runs path with args in the guest, writing stdin to its standard
// input, and waits until it exits or ctx ends. It first waits for the
// agent to answer (Wait). A process still running when ctx ends is left
// to the guest.
func Exec(ctx context.Context, a Agent, path string, args []string, stdin []byte) (*ExecResult, error) {
	if err := Wait(ctx, a); err != nil {
		return nil, err
	}
	c := a
	execArgs := map[string]any{"path": path, "arg": args, "capture-output": true}
	if stdin != nil {
		execArgs["input-data"] = base64.StdEncoding.EncodeToString(stdin)
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := c.Call(ctx, "guest-exec", execArgs, &started); err != nil {
		return nil, fmt.Errorf("guest-exec %s: %w", path, err)
	}
	for {
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			Signal   int    `json:"signal"`
			OutData  string `json:"out-data"`
			ErrData  string `json:"err-data"`
			OutTrunc bool   `json:"out-truncated"`
			ErrTrunc bool   `json:"err-truncated"`
		}
		if err := c.Call(ctx, "guest-exec-status", map[string]any{"pid": started.PID}, &st); err != nil {
			return nil, fmt.Errorf("guest-exec-status of %s (pid %d): %w", path, started.PID, err)
		}
		if st.Exited {
			r := &ExecResult{ExitCode: st.ExitCode, Signal: st.Signal, Truncated: st.OutTrunc || st.ErrTrunc}
			var err error
			if r.Stdout, err = base64.StdEncoding.DecodeString(st.OutData); err != nil {
				return nil, fmt.Errorf("guest-exec-status: stdout: %w", err)
			}
			if r.Stderr, err = base64.StdEncoding.DecodeString(st.ErrData); err != nil {
				return nil, fmt.Errorf("guest-exec-status: stderr: %w", err)
			}
			return r, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for %s (guest pid %d): %w", path, started.PID, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// connect dials sock and synchronises with the agent, retrying until ctx
// ends: the socket accepts connections as soon as QEMU runs, long before
// the guest's agent reads from its end.
func connect(ctx context.Context, sock string) (*conn, error) {
	var last error
	for {
		c, err := dialSync(ctx, sock)
		if err == nil {
			return c, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w on %s: %v (last attempt: %v)", ErrNoAgent, sock, ctx.Err(), last)
		case <-time.After(pollInterval):
		}
	}
}

func dialSync(ctx context.Context, sock string) (*conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	c := &conn{sock: sock, c: nc, rd: bufio.NewReader(nc)}
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if err := c.sync(sctx); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// sync sends 0xFF (which makes the agent drop a partial command) and
// guest-sync-delimited with a random id, then skips everything up to the
// agent's 0xFF and answers until the one carrying that id.
func (c *conn) sync(ctx context.Context) error {
	var b [4]byte
	rand.Read(b[:])
	id := int64(binary.BigEndian.Uint32(b[:]) >> 1)
	req, _ := json.Marshal(map[string]any{"execute": "guest-sync-delimited", "arguments": map[string]any{"id": id}})
	c.setDeadline(ctx)
	if _, err := c.c.Write(append([]byte{0xff}, req...)); err != nil {
		return fmt.Errorf("guest-sync-delimited: %w", err)
	}
	if _, err := c.rd.ReadBytes(0xff); err != nil {
		return fmt.Errorf("guest-sync-delimited: %w", err)
	}
	for {
		var got int64
		if err := c.read(&got); err != nil {
			return fmt.Errorf("guest-sync-delimited: %w", err)
		}
		if got == id {
			return nil
		}
	}
}

func (c *conn) setDeadline(ctx context.Context) {
	if d, ok := ctx.Deadline(); ok {
		c.c.SetDeadline(d)
	} else {
		c.c.SetDeadline(time.Time{})
	}
}

// Close closes the connection.
func (c *conn) Close() error { return c.c.Close() }

// Call runs one command and decodes its "return" into out.
func (c *conn) Call(ctx context.Context, cmd string, args any, out any) error {
	req, err := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
	if err != nil {
		return err
	}
	c.setDeadline(ctx)
	if _, err := c.c.Write(append(req, '\n')); err != nil {
		return err
	}
	return c.read(out)
}

// read decodes one answer: its "return" into out, or its "error" as an
// error.
func (c *conn) read(out any) error {
	line, err := c.rd.ReadBytes('\n')
	if err != nil {
		return err
	}
	return decodeAnswer(line, out)
}

// decodeAnswer decodes one answer line: its "return" into out, or its
// "error" as an error.
func decodeAnswer(line []byte, out any) error {
	line = bytes.TrimLeft(line, "\xff")
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("decode agent answer %q: %w", bytes.TrimSpace(line), err)
	}
	if resp.Error != nil {
		return fmt.Errorf("agent: %s: %s", resp.Error.Class, resp.Error.Desc)
	}
	if out == nil || len(resp.Return) == 0 {
		return nil
	}
	if err := json.Unmarshal(resp.Return, out); err != nil {
		return fmt.Errorf("decode agent answer %q: %w", bytes.TrimSpace(line), err)
	}
	return nil
}
