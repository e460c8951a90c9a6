package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrClosed is returned for commands that were pending or issued after the
// connection ended.
var ErrClosed = errors.New("qmp: connection closed")

// Error is an error reply from QEMU.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// Client is one QMP connection. Its methods may be called concurrently.
type Client struct {
	conn net.Conn
	// Version is QEMU's version from the greeting, e.g. "7.2.22".
	Version string

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	nextID  int                   // guarded by mu
	pending map[string]chan reply // guarded by mu
	waiters map[*waiter]struct{}  // guarded by mu
	err     error                 // set once the reader ends; guarded by mu
	done    chan struct{}
}

type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID    string          `json:"id"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// parseReply decodes one line from QEMU: a reply to a command (by id) or
// an event. Lines that are neither (not JSON, or a reply without id) are
// not for us: ok is false.
func parseReply(line []byte) (r reply, ok bool) {
	if err := json.Unmarshal(line, &r); err != nil {
		return reply{}, false
	}
	if r.Event == "" && r.ID == "" {
		return reply{}, false
	}
	return r, true
}

type waiter struct {
	match func(Event) bool
	ch    chan Event
}

// Dial connects to the QMP socket at path ("unix:" prefix allowed), reads
// the greeting and enters command mode.
func Dial(ctx context.Context, path string) (*Client, error) {
	path = strings.TrimPrefix(path, "unix:")
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: connect %s: %w", path, err)
	}
	c := &Client{conn: conn, pending: map[string]chan reply{}, waiters: map[*waiter]struct{}{}, done: make(chan struct{})}
	br := bufio.NewReaderSize(conn, 64<<10)
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Second)
	}
	_ = conn.SetReadDeadline(dl)
	line, err := br.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: read greeting from %s: %w", path, err)
	}
	var g struct {
		QMP *struct {
			Version struct {
				QEMU struct{ Major, Minor, Micro int } `json:"qemu"`
			} `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(line, &g); err != nil || g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: %s sent no QMP greeting", path)
	}
	v := g.QMP.Version.QEMU
	c.Version = fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
	_ = conn.SetReadDeadline(time.Time{})
	go c.readLoop(br)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close ends the connection.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Client) readLoop(br *bufio.Reader) {
	defer close(c.done)
	var err error
	for {
		var line []byte
		line, err = br.ReadBytes('\n')
		if err != nil {
			break
		}
		r, ok := parseReply(line)
		if !ok {
			continue
		}
		c.mu.Lock()
		if r.Event != "" {
			ev := Event{Name: r.Event, Data: r.Data}
			for w := range c.waiters {
				if w.match(ev) {
					select {
					case w.ch <- ev:
					default:
					}
				}
			}
		} else if ch, ok := c.pending[r.ID]; ok {
			delete(c.pending, r.ID)
			ch <- r
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.err = fmt.Errorf("%w: %v", ErrClosed, err)
	for id, ch := range c.pending {
		delete(c.pending, id)
		close(ch)
	}
	c.mu.Unlock()
}

// Execute runs command with args (nil for none) and decodes the return
// value into out (nil to ignore it). An error reply is an *Error.
func (c *Client) Execute(ctx context.Context, command string, args, out any) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.nextID++
	id := "ferry-" + strconv.Itoa(c.nextID)
	ch := make(chan reply, 1)
	c.pending[id] = ch
	c.mu.Unlock()
	msg := map[string]any{"execute": command, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("qmp: encode %s: %w", command, err)
	}
	c.wmu.Lock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err = c.conn.Write(append(b, '\n'))
	c.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("qmp: send %s: %w", command, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp: %s: %w", command, ErrClosed)
		}
		if r.Error != nil {
			return &Error{Command: command, Class: r.Error.Class, Desc: r.Error.Desc}
		}
		if out != nil {
			if err := json.Unmarshal(r.Return, out); err != nil {
				return fmt.Errorf("qmp: decode %s reply: %w", command, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return fmt.Errorf("qmp: %s: %w", command, ctx.Err())
	}
}

// Subscription receives the events that match its filter, from when it
// was made until Stop. Events that arrive while its buffer (64) is full
// are dropped, so subscribe only to events you wait for.
type Subscription struct {
	c *Client
	w *waiter
}

// Subscribe starts receiving events that match (nil: all).
func (c *Client) Subscribe(match func(Event) bool) *Subscription {
	if match == nil {
		match = func(Event) bool { return true }
	}
	w := &waiter{match: match, ch: make(chan Event, 64)}
	c.mu.Lock()
	c.waiters[w] = struct{}{}
	c.mu.Unlock()
	return &Subscription{c: c, w: w}
}

// Next waits for the next matching event.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	select {
	case ev := <-s.w.ch:
		return ev, nil
	case <-s.c.done:
		return Event{}, ErrClosed
	case <-ctx.Done():
		return Event{}, fmt.Errorf("qmp: wait for event: %w", ctx.Err())
	}
}

// Stop ends the subscription.
func (s *Subscription) Stop() {
	s.c.mu.Lock()
	delete(s.c.waiters, s.w)
	s.c.mu.Unlock()
}
