package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// Connect opens a data-plane connection with the agent's certificate. The
// server refuses it if this agent was disconnected or paired again.
func Connect(ctx context.Context, stateDir string) (*tls.Conn, error) {
	st, err := LoadState(stateDir)
	if err != nil {
		return nil, err
	}
	conf, err := DataPlaneTLS(stateDir)
	if err != nil {
		return nil, err
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}, Config: conf}
	c, err := d.DialContext(ctx, "tcp", st.DataPlaneAddress)
	if err != nil {
		return nil, fmt.Errorf("connect to data plane %s: %w", st.DataPlaneAddress, err)
	}
	tc := c.(*tls.Conn)
	// TLS 1.3 delivers the server's verdict on our certificate after the
	// handshake; a read surfaces a refusal now rather than later.
	_ = tc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	var b [1]byte
	if _, err := tc.Read(b[:]); err != nil && !isTimeout(err) {
		tc.Close()
		if err == io.EOF {
			return nil, fmt.Errorf("data plane %s closed the connection: this agent may be disconnected or paired again", st.DataPlaneAddress)
		}
		return nil, fmt.Errorf("data plane %s refused this agent: %w", st.DataPlaneAddress, err)
	}
	_ = tc.SetReadDeadline(time.Time{})
	return tc, nil
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// Run keeps the agent connected to the data plane until ctx ends,
// reconnecting with backoff (1 s doubling to 30 s).
func Run(ctx context.Context, stateDir string, log *slog.Logger) error {
	backoff := time.Second
	for ctx.Err() == nil {
		c, err := Connect(ctx, stateDir)
		if err != nil {
			log.Warn("data plane connection failed; retrying", "err", err, "in", backoff)
		} else {
			backoff = time.Second
			log.Info("connected to data plane", "server", c.RemoteAddr().String())
			done := make(chan struct{})
			go func() {
				select {
				case <-ctx.Done():
				case <-done:
				}
				c.Close()
			}()
			_, err = io.Copy(io.Discard, c)
			close(done)
			if ctx.Err() == nil {
				log.Warn("data plane connection lost; reconnecting", "err", err)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
	return nil
}
