package cli

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"golang.org/x/sys/unix"
)

// lastFrame is what a terminal shows on the bar's line after out: the text
// after the last carriage return, without the clear-to-end escape.
func lastFrame(out string) string {
	if i := strings.LastIndex(out, "\r"); i >= 0 {
		out = out[i+1:]
	}
	return strings.TrimSuffix(out, "\x1b[K")
}

func TestBarLineFitsTheTerminal(t *testing.T) {
	tests := []struct {
		name    string
		width   int
		frac    float64
		label   string
		want    string
		wantBar int // cells in the bar, 0 for none
	}{
		{"80 columns", 80, 0.5, "uploading inventory.csv (12.0 KiB)", "uploading inventory.csv (12.0 KiB) [", 37},
		{"wide terminal caps the bar", 200, 1, "job j-1 STARTED: 0/1 servers done", "job j-1 STARTED", 50},
		{"narrow terminal cuts the label", 30, 0.25, "uploading a-very-long-file-name.csv (1.0 MiB)", "uploading… [###.......]  25%", 10},
		{"unknown total: label only", 20, -1, "exporting: 1200 servers (340.0 KiB)", "exporting: 1200 se…", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			p := NewProgressOn(&b, Terminal{TTY: true, Width: tt.width})
			p.Update(tt.frac, tt.label)
			got := lastFrame(b.String())
			if n := utf8.RuneCountInString(got); n >= tt.width {
				t.Errorf("line of %d runes on a %d-column terminal: %q", n, tt.width, got)
			}
			if !strings.HasPrefix(got, tt.want) {
				t.Errorf("line %q, want it to start with %q", got, tt.want)
			}
			cells := 0
			if i, j := strings.LastIndex(got, "["), strings.LastIndex(got, "]"); i >= 0 && j > i {
				cells = j - i - 1
			}
			if cells != tt.wantBar {
				t.Errorf("bar of %d cells, want %d: %q", cells, tt.wantBar, got)
			}
			if !strings.HasPrefix(b.String(), "\r") || !strings.HasSuffix(b.String(), "\x1b[K") {
				t.Errorf("a terminal bar is redrawn in place: %q", b.String())
			}
		})
	}
}

func TestProgressOnTerminalKeepsLogAboveTheBar(t *testing.T) {
	var b bytes.Buffer
	p := NewProgressOn(&b, Terminal{TTY: true, Width: 60})
	p.Update(0.1, "job j-1 STARTED: 0/1 servers done")
	p.Println("  0.1s  SNAPSHOT_START")
	p.Update(0.3, "job j-1 STARTED: 0/1 servers done")
	p.Done("Job j-1 completed")
	// 60 columns: the 33-rune label leaves 18 cells for the bar.
	want := "\rjob j-1 STARTED: 0/1 servers done [##................]  10%\x1b[K" +
		"\r\x1b[K  0.1s  SNAPSHOT_START\n" +
		"\rjob j-1 STARTED: 0/1 servers done [#####.............]  30%\x1b[K" +
		"\r\x1b[KJob j-1 completed\n"
	if b.String() != want {
		t.Fatalf("terminal output\n%q\nwant\n%q", b.String(), want)
	}
}

func TestProgressPlainLines(t *testing.T) {
	var b bytes.Buffer
	p := NewProgressOn(&b, Terminal{})
	for i := range 101 {
		p.Update(float64(i)/100, "uploading a.csv (1.0 KiB)")
	}
	p.Update(-1, "the server checks every row of a.csv…")
	p.Update(-1, "the server checks every row of a.csv…")
	p.Println("log line")
	p.Done("done")
	out := b.String()
	if strings.ContainsAny(out, "\r\x1b") {
		t.Fatalf("control characters in plain output: %q", out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	// One line per tenth (0%..100%), one for the check, the log, the end.
	if len(lines) != 11+3 || lines[0] != "uploading a.csv (1.0 KiB)   0%" || lines[10] != "uploading a.csv (1.0 KiB) 100%" ||
		lines[11] != "the server checks every row of a.csv…" || lines[13] != "done" {
		t.Fatalf("plain output:\n%s", out)
	}
}

// TestTerminalOf opens a real pseudo-terminal: it is a terminal of the
// width set on it; a pipe and a buffer are not terminals.
func TestTerminalOf(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile("/dev/pts/"+itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	if err := unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 132}); err != nil {
		t.Fatal(err)
	}
	if got := TerminalOf(pts); !got.TTY || got.Width != 132 {
		t.Errorf("pty: %+v, want a 132-column terminal", got)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if got := TerminalOf(w); got.TTY {
		t.Errorf("pipe: %+v", got)
	}
	if got := TerminalOf(&bytes.Buffer{}); got.TTY {
		t.Errorf("buffer: %+v", got)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestWatchFrame(t *testing.T) {
	servers := func() []ferry.SourceServer {
		return []ferry.SourceServer{
			{Hostname: "web-1", Lifecycle: ferry.LifecycleNotReady, Replication: ferry.ReplicationInfo{State: ferry.ReplicationInitialSync, ETASeconds: 90},
				Disks: []ferry.Disk{{SizeBytes: 300 << 20, ReplicatedBytes: 100 << 20}}},
			{Hostname: "db-1", Lifecycle: ferry.LifecycleReadyForTest, Replication: ferry.ReplicationInfo{State: ferry.ReplicationContinuous, LagSeconds: 2},
				Disks: []ferry.Disk{{SizeBytes: 100 << 20, ReplicatedBytes: 100 << 20}}},
		}
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		term     Terminal
		wantBar  int
		wantWide int // no line wider than this (0: no limit)
	}{
		// The table without its bars is 68 columns wide here (78 with
		// 10-cell bars): the bars get what is left of the terminal.
		{"not a terminal", Terminal{}, 20, 0},
		{"60 columns: at least 10 cells", Terminal{TTY: true, Width: 60}, 10, 0},
		{"80 columns", Terminal{TTY: true, Width: 80}, 11, 80},
		{"100 columns", Terminal{TTY: true, Width: 100}, 31, 100},
		{"300 columns: at most 50 cells", Terminal{TTY: true, Width: 300}, 50, 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := watchFrame(&b, servers(), tt.term, 2*time.Second, now); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			if tt.term.TTY != strings.HasPrefix(out, "\x1b[H\x1b[2J") {
				t.Fatalf("clear screen only on a terminal: %q", out)
			}
			if !tt.term.TTY && strings.ContainsRune(out, '\x1b') {
				t.Fatalf("escape in plain output: %q", out)
			}
			if !strings.Contains(out, "replicated 200.0 MiB of 400.0 MiB  "+progressBar(0.5, tt.wantBar)+"\n") ||
				!strings.Contains(out, progressBar(1.0/3, tt.wantBar)) {
				t.Errorf("total line with a %d-cell bar missing:\n%s", tt.wantBar, out)
			}
			for _, l := range strings.Split(strings.TrimPrefix(out, "\x1b[H\x1b[2J"), "\n") {
				if tt.wantWide > 0 && utf8.RuneCountInString(l) >= tt.wantWide {
					t.Errorf("line of %d runes on a %d-column terminal: %q", utf8.RuneCountInString(l), tt.wantWide, l)
				}
			}
			if !strings.Contains(out, "web-1") || !strings.Contains(out, " 33%") || !strings.Contains(out, "1m30s") {
				t.Errorf("server rows:\n%s", out)
			}
		})
	}
}

func TestJobProgress(t *testing.T) {
	log := func(events ...string) []ferry.JobLogItem {
		var out []ferry.JobLogItem
		for _, e := range events {
			srv, ev, _ := strings.Cut(e, ":")
			out = append(out, ferry.JobLogItem{SourceServerID: srv, Event: ferry.JobEvent(ev)})
		}
		return out
	}
	two := []ferry.JobServer{{SourceServerID: "a", LaunchStatus: ferry.LaunchInProgress}, {SourceServerID: "b", LaunchStatus: ferry.LaunchInProgress}}
	tests := []struct {
		name     string
		status   ferry.JobStatus
		servers  []ferry.JobServer
		log      []ferry.JobLogItem
		want     float64
		wantDone int
	}{
		{"started", ferry.JobStarted, two, log(":JOB_START"), 0, 0},
		{"snapshots", ferry.JobStarted, two, log(":JOB_START", "a:SNAPSHOT_START", "a:SNAPSHOT_END", "b:SNAPSHOT_START"), (2.0 + 1.0) / 16, 0},
		{"one failed", ferry.JobStarted, two, log("a:SNAPSHOT_START", "a:SNAPSHOT_FAIL", "b:LAUNCH_START", "b:POST_LAUNCH_ACTION_START"), (8.0 + 6.0) / 16, 1},
		{"post-launch end after start", ferry.JobStarted, two[:1], log("a:POST_LAUNCH_ACTION_END", "a:POST_LAUNCH_ACTION_START"), 7.0 / 8, 0},
		{"terminate", ferry.JobStarted, two, log("a:CLEANUP_START", "b:CLEANUP_END"), (4.0 + 8.0) / 16, 1},
		{"completed", ferry.JobCompleted, two, log("a:SNAPSHOT_START"), 1, 2},
		{"launch status failed", ferry.JobStarted, []ferry.JobServer{{SourceServerID: "a", LaunchStatus: ferry.LaunchFailed}}, nil, 1, 1},
		{"no servers", ferry.JobStarted, nil, nil, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := &api.JobWithLog{Job: ferry.Job{ID: "j-1", Status: tt.status, Servers: tt.servers}, Log: tt.log}
			got, label := jobProgress(j)
			if got != tt.want || !strings.Contains(label, " "+itoa(tt.wantDone)+"/") {
				t.Fatalf("got %v %q, want %v with %d done", got, label, tt.want, tt.wantDone)
			}
		})
	}
}
