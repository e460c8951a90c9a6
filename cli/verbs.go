package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// LoginOptions are the flags of `ferry login`.
type LoginOptions struct {
	Addr, Token, CAFingerprint string
}

// RunLogin checks the address, token and pin against the server, then
// saves them.
func RunLogin(ctx context.Context, o LoginOptions, out io.Writer) error {
	c, err := Resolve()
	if err != nil {
		return err
	}
	if o.Addr != "" {
		c.Addr = o.Addr
	}
	if o.Token != "" {
		c.Token = o.Token
	}
	if o.CAFingerprint != "" {
		c.CAFingerprint = o.CAFingerprint
	}
	if c.Token == "" {
		return fmt.Errorf("no token: pass --token or set FERRY_TOKEN")
	}
	cl, err := c.Client()
	if err != nil {
		return err
	}
	who, err := cl.WhoAmI(ctx)
	if err != nil {
		return fmt.Errorf("check token with %s: %w", c.Addr, err)
	}
	p, err := c.Save()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Logged in to %s as %s (%s); saved to %s\n", c.Addr, who.Name, who.Role, p)
	return nil
}

func client() (*api.Client, error) {
	c, err := Resolve()
	if err != nil {
		return nil, err
	}
	if c.Token == "" {
		return nil, fmt.Errorf("no token: run 'ferry login' or set FERRY_TOKEN")
	}
	return c.Client()
}

// ServersListOptions are the flags of `ferry servers list`.
type ServersListOptions struct {
	Lifecycle, Replication, Application, Wave, Text string
	Tags                                            []string
	Archived                                        bool
	Limit                                           int
	Output                                          string
}

// RunServersList prints the servers matching the filters, every page.
func RunServersList(ctx context.Context, o ServersListOptions, out io.Writer) error {
	if err := CheckFormat(o.Output); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("lifecycle_state", o.Lifecycle)
	set("replication_state", o.Replication)
	set("application_id", o.Application)
	set("wave_id", o.Wave)
	set("text", o.Text)
	for _, t := range o.Tags {
		q.Add("tag", t)
	}
	if o.Archived {
		q.Set("archived", "true")
	}
	var servers []ferry.SourceServer
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
		page, err := cl.ListServers(ctx, q)
		if err != nil {
			return err
		}
		servers = page.Items
	} else if servers, err = cl.AllServers(ctx, q); err != nil {
		return err
	}
	if o.Output != FormatTable {
		if servers == nil {
			servers = []ferry.SourceServer{}
		}
		return writeData(out, o.Output, servers)
	}
	rows := make([][]string, 0, len(servers))
	for _, s := range servers {
		rows = append(rows, []string{
			s.ID, s.Hostname, string(s.Lifecycle), string(s.Replication.State),
			strconv.Itoa(s.CPUs), bytesIEC(s.RAMBytes), fmt.Sprintf("%d (%s)", len(s.Disks), bytesIEC(s.TotalBytes())),
			orDash(s.OS), when(s.LastSeenAt),
		})
	}
	return table(out, []string{"ID", "HOSTNAME", "LIFECYCLE", "REPLICATION", "CPUS", "RAM", "DISKS", "OS", "LAST SEEN"}, rows)
}

// RunServersShow prints one server in full.
func RunServersShow(ctx context.Context, id, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	s, err := cl.Server(ctx, id)
	if err != nil {
		return err
	}
	if format != FormatTable {
		return writeData(out, format, s)
	}
	tags := make([]string, 0, len(s.Tags))
	for k, v := range s.Tags {
		tags = append(tags, k+"="+v)
	}
	sort.Strings(tags)
	kv := [][]string{
		{"ID", s.ID}, {"Hostname", s.Hostname}, {"Machine ID", s.MachineID}, {"OS", orDash(s.OS)},
		{"Kernel", orDash(s.Kernel)}, {"CPUs", strconv.Itoa(s.CPUs)}, {"RAM", bytesIEC(s.RAMBytes)},
		{"Lifecycle", string(s.Lifecycle)}, {"Replication", string(s.Replication.State)},
		{"Archived", strconv.FormatBool(s.Archived)}, {"Application", orDash(s.ApplicationID)},
		{"Wave", orDash(s.WaveID)}, {"Tags", orDash(strings.Join(tags, ", "))},
		{"Agent", orDash(s.AgentVersion)}, {"Last seen", when(s.LastSeenAt)}, {"Created", when(s.CreatedAt)},
	}
	if s.Replication.ErrorCode != "" {
		kv = append(kv, []string{"Error", string(s.Replication.ErrorCode) + ": " + s.Replication.ErrorMessage})
	}
	for _, st := range s.Replication.Steps {
		kv = append(kv, []string{"  " + string(st.Step), string(st.Status)})
	}
	for _, n := range s.NICs {
		kv = append(kv, []string{"NIC " + n.Name, orDash(n.MAC) + " " + strings.Join(n.IPs, " ")})
	}
	if err := table(out, []string{"FIELD", "VALUE"}, kv); err != nil {
		return err
	}
	fmt.Fprintln(out)
	rows := make([][]string, 0, len(s.Disks))
	for _, d := range s.Disks {
		rows = append(rows, []string{d.Name, bytesIEC(d.SizeBytes), strconv.Itoa(d.LogicalBlockSize), orDash(d.Model), bytesIEC(d.ReplicatedBytes), bytesIEC(d.BackloggedBytes)})
	}
	return table(out, []string{"DISK", "SIZE", "BLOCK", "MODEL", "REPLICATED", "BACKLOG"}, rows)
}

// TokenCreateOptions are the flags of `ferry tokens create`.
type TokenCreateOptions struct {
	Name    string
	Role    string
	Expires time.Duration
	Output  string
}

// RunTokensCreate makes an API token and prints its secret once.
func RunTokensCreate(ctx context.Context, o TokenCreateOptions, out io.Writer) error {
	if err := CheckFormat(o.Output); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	t, err := cl.CreateToken(ctx, &api.CreateTokenRequest{Name: o.Name, Role: ferry.Role(o.Role), ExpiresInSeconds: int64(o.Expires / time.Second)})
	if err != nil {
		return err
	}
	if o.Output != FormatTable {
		return writeData(out, o.Output, t)
	}
	fmt.Fprintf(out, "Created %s token %s (%s). Its secret, shown this once:\n\n    %s\n", t.Role, t.ID, t.Name, t.Secret)
	return nil
}

// RunTokensList lists API tokens.
func RunTokensList(ctx context.Context, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	ts, err := cl.ListTokens(ctx)
	if err != nil {
		return err
	}
	if format != FormatTable {
		return writeData(out, format, ts)
	}
	rows := make([][]string, 0, len(ts))
	for _, t := range ts {
		state := "active"
		if !t.Active(time.Now()) {
			state = "revoked/expired"
		}
		rows = append(rows, []string{t.ID, t.Name, string(t.Role), state, when(t.CreatedAt), when(t.ExpiresAt), when(t.LastUsedAt)})
	}
	return table(out, []string{"ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST USED"}, rows)
}

// RunTokensRevoke revokes an API token.
func RunTokensRevoke(ctx context.Context, id string, out io.Writer) error {
	cl, err := client()
	if err != nil {
		return err
	}
	if err := cl.RevokeToken(ctx, id); err != nil {
		return err
	}
	fmt.Fprintf(out, "Revoked token %s\n", id)
	return nil
}

// InstallTokenCreateOptions are the flags of `ferry install-tokens create`.
type InstallTokenCreateOptions struct {
	Name, Application, Wave string
	Tags                    []string
	MaxUses                 int
	Expires                 time.Duration
	Output                  string
}

// RunInstallTokensCreate makes an install token and prints its secret once,
// with the command to run on source servers.
func RunInstallTokensCreate(ctx context.Context, o InstallTokenCreateOptions, out io.Writer) error {
	if err := CheckFormat(o.Output); err != nil {
		return err
	}
	tags := map[string]string{}
	for _, t := range o.Tags {
		k, v, ok := strings.Cut(t, "=")
		if !ok || k == "" {
			return fmt.Errorf("--tag %q: want key=value", t)
		}
		tags[k] = v
	}
	cfg, err := Resolve()
	if err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	t, err := cl.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{
		Name: o.Name, ApplicationID: o.Application, WaveID: o.Wave, Tags: tags,
		MaxUses: o.MaxUses, ExpiresInSeconds: int64(o.Expires / time.Second),
	})
	if err != nil {
		return err
	}
	if o.Output != FormatTable {
		return writeData(out, o.Output, t)
	}
	fmt.Fprintf(out, "Created install token %s (%s), expires %s. Its secret, shown this once:\n\n    %s\n\nOn each source server, as root:\n\n    ferry agent --server %s --install-token %s --ca-fingerprint %s\n",
		t.ID, t.Name, when(t.ExpiresAt), t.Secret, cfg.Addr, t.Secret, cfg.CAFingerprint)
	return nil
}

// RunInstallTokensList lists install tokens.
func RunInstallTokensList(ctx context.Context, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	ts, err := cl.ListInstallTokens(ctx)
	if err != nil {
		return err
	}
	if format != FormatTable {
		return writeData(out, format, ts)
	}
	rows := make([][]string, 0, len(ts))
	now := time.Now()
	for _, t := range ts {
		state := "usable"
		if err := t.Usable(now); err != nil {
			state = strings.TrimPrefix(err.Error(), "install token ")
		}
		uses := strconv.Itoa(t.Uses)
		if t.MaxUses > 0 {
			uses += "/" + strconv.Itoa(t.MaxUses)
		}
		rows = append(rows, []string{t.ID, t.Name, state, uses, orDash(t.ApplicationID), orDash(t.WaveID), when(t.ExpiresAt)})
	}
	return table(out, []string{"ID", "NAME", "STATE", "USES", "APPLICATION", "WAVE", "EXPIRES"}, rows)
}

// RunInstallTokensRevoke revokes an install token.
func RunInstallTokensRevoke(ctx context.Context, id string, out io.Writer) error {
	cl, err := client()
	if err != nil {
		return err
	}
	if err := cl.RevokeInstallToken(ctx, id); err != nil {
		return err
	}
	fmt.Fprintf(out, "Revoked install token %s\n", id)
	return nil
}

// RunServerAction posts one of the server actions (disconnect, archive,
// unarchive, replication/pause, …) and prints the server's new state.
func RunServerAction(ctx context.Context, id, action, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	var s ferry.SourceServer
	if err := cl.Do(ctx, "POST", "/servers/"+url.PathEscape(id)+"/"+action, nil, nil, &s); err != nil {
		return err
	}
	if format != FormatTable {
		return writeData(out, format, s)
	}
	desired := string(s.Desired)
	if desired == "" {
		desired = "RUN"
	}
	fmt.Fprintf(out, "%s: lifecycle %s, replication %s (set to %s), archived %v\n", s.ID, s.Lifecycle, s.Replication.State, desired, s.Archived)
	return nil
}

// ErrNotConfirmed means a destructive verb was not confirmed with --yes.
var ErrNotConfirmed = errors.New("not confirmed")

// RunServerDelete deletes a disconnected or archived server and its
// replica (every snapshot with it), once confirmed: it cannot be undone.
func RunServerDelete(ctx context.Context, id string, yes bool, out io.Writer) error {
	if !yes {
		return fmt.Errorf("%w: deleting server %s deletes its replica and every snapshot of it, for good; add --yes", ErrNotConfirmed, id)
	}
	cl, err := client()
	if err != nil {
		return err
	}
	if err := cl.DeleteServer(ctx, id); err != nil {
		return err
	}
	fmt.Fprintf(out, "Deleted server %s and its replica\n", id)
	return nil
}

// RunThrottle sets a server's replication bandwidth limit (0: none).
func RunThrottle(ctx context.Context, id string, bytesPerSec int64, out io.Writer) error {
	if bytesPerSec < 0 {
		return fmt.Errorf("bandwidth %d: must not be negative (0 means no limit)", bytesPerSec)
	}
	cl, err := client()
	if err != nil {
		return err
	}
	s, err := cl.Server(ctx, id)
	if err != nil {
		return err
	}
	rs := s.ReplicationSetup
	rs.BandwidthBytesPerSec = bytesPerSec
	if err := cl.Do(ctx, "PATCH", "/servers/"+url.PathEscape(id), nil, api.UpdateServerRequest{Replication: &rs}, s); err != nil {
		return err
	}
	limit := "no limit"
	if bytesPerSec > 0 {
		limit = bytesIEC(bytesPerSec) + "/s"
	}
	fmt.Fprintf(out, "%s: replication bandwidth %s\n", s.ID, limit)
	return nil
}
