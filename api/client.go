package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry"
)

// Client calls Ferry's API. Build one with NewClient.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// NewClient returns a client for the server at addr (https://host:port),
// authenticating with token (may be empty for pairing and health), over TLS
// configured by tlsConf (which pins Ferry's CA; see package pki).
func NewClient(addr, token string, tlsConf *tls.Config) (*Client, error) {
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("server address %q: want https://host:port", addr)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	return &Client{
		base:  strings.TrimRight(addr, "/") + "/api/v1",
		token: token,
		hc:    &http.Client{Transport: tr, Timeout: 60 * time.Second},
	}, nil
}

// CloseIdleConnections closes the client's idle keep-alive connections: an
// agent that has paired frees the server's connection at once.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Do sends a request with an optional JSON body and decodes a JSON answer
// into out (if not nil). An error answer comes back as *Error.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Code == "" {
			e.Code = http.StatusText(resp.StatusCode)
			e.Message = strings.TrimSpace(string(data))
		}
		return e
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// Health asks whether the server is up. It needs no token.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	return &h, c.Do(ctx, http.MethodGet, "/health", nil, nil, &h)
}

// WhoAmI describes the client's token.
func (c *Client) WhoAmI(ctx context.Context) (*WhoAmI, error) {
	var w WhoAmI
	return &w, c.Do(ctx, http.MethodGet, "/whoami", nil, nil, &w)
}

// Pair pairs an agent; it needs no API token.
func (c *Client) Pair(ctx context.Context, req *PairRequest) (*PairResponse, error) {
	var r PairResponse
	return &r, c.Do(ctx, http.MethodPost, "/pair", nil, req, &r)
}

// ListServers returns one page of servers; q holds filters
// (lifecycle_state, replication_state, application_id, wave_id, tag, text,
// archived, limit, next_token).
func (c *Client) ListServers(ctx context.Context, q url.Values) (*List[ferry.SourceServer], error) {
	var l List[ferry.SourceServer]
	return &l, c.Do(ctx, http.MethodGet, "/servers", q, nil, &l)
}

// AllServers walks every page of servers matching q.
func (c *Client) AllServers(ctx context.Context, q url.Values) ([]ferry.SourceServer, error) {
	q2 := url.Values{}
	for k, v := range q {
		q2[k] = v
	}
	var all []ferry.SourceServer
	for {
		page, err := c.ListServers(ctx, q2)
		if err != nil {
			return nil, err
		}
		all = append(all, page.Items...)
		if page.NextToken == "" {
			return all, nil
		}
		q2.Set("next_token", page.NextToken)
	}
}

// Server returns one server.
func (c *Client) Server(ctx context.Context, id string) (*ferry.SourceServer, error) {
	var s ferry.SourceServer
	return &s, c.Do(ctx, http.MethodGet, "/servers/"+url.PathEscape(id), nil, nil, &s)
}

// CreateToken makes an API token.
func (c *Client) CreateToken(ctx context.Context, req *CreateTokenRequest) (*CreatedToken, error) {
	var t CreatedToken
	return &t, c.Do(ctx, http.MethodPost, "/tokens", nil, req, &t)
}

// ListTokens lists API tokens.
func (c *Client) ListTokens(ctx context.Context) ([]ferry.Token, error) {
	var l List[ferry.Token]
	return l.Items, c.Do(ctx, http.MethodGet, "/tokens", nil, nil, &l)
}

// DeleteServer deletes a disconnected or archived server and its replica.
func (c *Client) DeleteServer(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/servers/"+url.PathEscape(id), nil, nil, nil)
}

// RevokeToken revokes an API token.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/tokens/"+url.PathEscape(id), nil, nil, nil)
}

// CreateInstallToken makes an install token.
func (c *Client) CreateInstallToken(ctx context.Context, req *CreateInstallTokenRequest) (*CreatedInstallToken, error) {
	var t CreatedInstallToken
	return &t, c.Do(ctx, http.MethodPost, "/install-tokens", nil, req, &t)
}

// ListInstallTokens lists install tokens.
func (c *Client) ListInstallTokens(ctx context.Context) ([]ferry.InstallToken, error) {
	var l List[ferry.InstallToken]
	return l.Items, c.Do(ctx, http.MethodGet, "/install-tokens", nil, nil, &l)
}

// RevokeInstallToken revokes an install token.
func (c *Client) RevokeInstallToken(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/install-tokens/"+url.PathEscape(id), nil, nil, nil)
}

// Import sends an inventory CSV (POST /import). When the file has
// problems the error is an *Error whose Errors list every one of them.
func (c *Client) Import(ctx context.Context, csv io.Reader, dryRun bool) (*ImportTask, error) {
	q := url.Values{}
	if dryRun {
		q.Set("dry_run", "true")
	}
	var t ImportTask
	return &t, c.DoRaw(ctx, http.MethodPost, "/import", q, "text/csv", csv, &t, nil)
}

// Export writes the inventory CSV (GET /export) to w.
func (c *Client) Export(ctx context.Context, w io.Writer) error {
	return c.DoRaw(ctx, http.MethodGet, "/export", nil, "", nil, nil, w)
}

// DoRaw sends a request with a body of the given content type (if body is
// not nil) and either decodes a JSON answer into out or copies the answer
// to raw. An error answer comes back as *Error.
func (c *Client) DoRaw(ctx context.Context, method, path string, query url.Values, contentType string, body io.Reader, out any, raw io.Writer) error {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 400 && raw != nil {
		if _, err := io.Copy(raw, resp.Body); err != nil {
			return fmt.Errorf("%s %s: read answer: %w", method, path, err)
		}
		return nil
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Code == "" {
			e.Code = http.StatusText(resp.StatusCode)
			e.Message = strings.TrimSpace(string(data))
		}
		return e
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// ReadEvents reads a server-sent event stream (GET /events) from r and
// calls fn with each event's name and data, until fn returns false, the
// stream ends (nil) or reading fails. Comments and retry lines are
// skipped.
func ReadEvents(r io.Reader, fn func(event string, data []byte) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var event string
	var data []byte
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != nil {
				if event == "" {
					event = "message"
				}
				if !fn(event, data) {
					return nil
				}
			}
			event, data = "", nil
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			d := strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")
			if data != nil {
				data = append(data, '\n')
			}
			data = append(data, d...)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read event stream: %w", err)
	}
	return nil
}
