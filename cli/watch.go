package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// WatchOptions are the flags of `ferry servers watch`.
type WatchOptions struct {
	Application, Wave, Text string
	// Interval is the time between refreshes (default 2 s).
	Interval time.Duration
	// Times ends the watch after this many refreshes; 0 watches until
	// interrupted.
	Times int
}

// RunServersWatch shows a live table of servers with progress bars and a
// total, refreshed every Interval. On a terminal the screen is redrawn in
// place and the bars fill its width; otherwise each refresh is printed
// after the previous one, as plain text.
func RunServersWatch(ctx context.Context, o WatchOptions, out io.Writer) error {
	cl, err := client()
	if err != nil {
		return err
	}
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	q := url.Values{}
	for k, v := range map[string]string{"application_id": o.Application, "wave_id": o.Wave, "text": o.Text} {
		if v != "" {
			q.Set(k, v)
		}
	}
	term := TerminalOf(out)
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for n := 1; ; n++ {
		servers, err := cl.AllServers(ctx, q)
		if err != nil {
			return err
		}
		var b bytes.Buffer
		if err := watchFrame(&b, servers, term, o.Interval, time.Now()); err != nil {
			return err
		}
		if _, err := out.Write(b.Bytes()); err != nil {
			return fmt.Errorf("write watch table: %w", err)
		}
		if o.Times > 0 && n >= o.Times {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// watchFrame writes one refresh of the watch: on a terminal it clears the
// screen first and sizes the bars to its width; elsewhere it is plain text
// with 20-cell bars, one frame after another.
func watchFrame(w io.Writer, servers []ferry.SourceServer, term Terminal, interval time.Duration, now time.Time) error {
	if term.TTY {
		fmt.Fprint(w, "\x1b[H\x1b[2J")
	}
	var total, done int64
	for _, s := range servers {
		for _, d := range s.Disks {
			total += d.SizeBytes
			done += min(d.ReplicatedBytes, d.SizeBytes)
		}
	}
	frac := 0.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	fmt.Fprintf(w, "%s  %d servers  (refresh every %s; Ctrl-C to stop)\n", now.Format("15:04:05"), len(servers), interval)
	width := 20
	if term.TTY {
		// Measure the table with the narrowest bars, then give the bars
		// what the terminal has left.
		var probe bytes.Buffer
		if err := watchTable(&probe, servers, 10); err != nil {
			return err
		}
		widest := 0
		for _, l := range strings.Split(probe.String(), "\n") {
			widest = max(widest, utf8.RuneCountInString(l))
		}
		width = min(max(10+term.Width-1-widest, 10), 50)
	}
	fmt.Fprintf(w, "replicated %s of %s  %s\n\n", bytesIEC(done), bytesIEC(total), progressBar(frac, width))
	return watchTable(w, servers, width)
}

// watchTable writes the servers with a progress bar each, width cells
// wide: initial sync or rescan progress, full once the disks are
// replicated.
func watchTable(w io.Writer, servers []ferry.SourceServer, width int) error {
	sort.Slice(servers, func(i, j int) bool { return servers[i].Hostname < servers[j].Hostname })
	rows := make([][]string, 0, len(servers))
	for _, s := range servers {
		var total, done, backlog int64
		for _, d := range s.Disks {
			total += d.SizeBytes
			done += d.ReplicatedBytes
			backlog += d.BackloggedBytes
		}
		frac := 0.0
		if total > 0 {
			frac = float64(done) / float64(total)
		}
		eta := "-"
		if s.Replication.ETASeconds > 0 {
			eta = (time.Duration(s.Replication.ETASeconds) * time.Second).String()
		}
		rows = append(rows, []string{s.Hostname, string(s.Lifecycle), string(s.Replication.State),
			progressBar(frac, width), fmt.Sprintf("%.0fs", s.Replication.LagSeconds), bytesIEC(backlog), eta})
	}
	return table(w, []string{"HOSTNAME", "LIFECYCLE", "REPLICATION", "PROGRESS", "LAG", "BACKLOG", "ETA"}, rows)
}

// progressBar draws frac (0–1) as a bar of width cells and a percentage.
func progressBar(frac float64, width int) string {
	frac = min(max(frac, 0), 1)
	full := int(frac*float64(width) + 0.5)
	return "[" + strings.Repeat("#", full) + strings.Repeat(".", width-full) + fmt.Sprintf("] %3.0f%%", 100*frac)
}

// UsageOptions are the flags of `ferry usage`.
type UsageOptions struct {
	Output string // table, json, yaml or csv
}

// RunUsage prints the usage report: per server, logical and stored staging
// bytes, snapshots, days replicated and bytes sent.
func RunUsage(ctx context.Context, o UsageOptions, out io.Writer) error {
	if o.Output != "csv" {
		if err := CheckFormat(o.Output); err != nil {
			return fmt.Errorf("%w (or csv)", err)
		}
	}
	cl, err := client()
	if err != nil {
		return err
	}
	if o.Output == "csv" {
		return cl.DoRaw(ctx, "GET", "/usage", url.Values{"format": {"csv"}}, "", nil, nil, out)
	}
	var rep api.UsageReport
	if err := cl.Do(ctx, "GET", "/usage", nil, nil, &rep); err != nil {
		return err
	}
	if o.Output != FormatTable {
		return writeData(out, o.Output, rep)
	}
	rows := make([][]string, 0, len(rep.Servers))
	for _, u := range rep.Servers {
		rows = append(rows, []string{u.SourceServerID, u.Hostname, bytesIEC(u.DiskBytes), bytesIEC(u.LogicalBytes), bytesIEC(u.StoredBytes),
			fmt.Sprint(u.Snapshots), fmt.Sprintf("%.1f", u.DaysReplicated), bytesIEC(u.BytesSent)})
	}
	if err := table(out, []string{"ID", "HOSTNAME", "DISKS", "LOGICAL", "STORED", "SNAPSHOTS", "DAYS", "SENT"}, rows); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nStaging store: %s stored (shared chunks once). DAYS: time connected and replicating; SENT: data the agent sent since pairing, after compression.\n", bytesIEC(rep.StoreStoredBytes))
	return nil
}
