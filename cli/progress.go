package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Terminal is what progress output knows of where it writes: whether it is
// a terminal (bars redrawn in place) and how many columns it has.
type Terminal struct {
	TTY   bool
	Width int
}

// defaultWidth is the width assumed when a terminal does not say.
const defaultWidth = 80

// TerminalOf reports whether w is a terminal and its width. Only an
// *os.File whose descriptor answers the terminal ioctls is one; a pipe, a
// file or /dev/null is not.
func TerminalOf(w io.Writer) Terminal {
	f, ok := w.(*os.File)
	if !ok {
		return Terminal{}
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return Terminal{}
	}
	t := Terminal{TTY: true, Width: defaultWidth}
	if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
		t.Width = int(ws.Col)
	}
	return t
}

// Progress shows how far a long operation is. On a terminal it keeps one
// line at the bottom, a label and a bar, redrawn in place, with log lines
// printed above it; elsewhere (a pipe, a file, CI logs) it prints plain
// lines, a new one only when the label changes or the percentage crosses a
// tenth, and never a control character. It is not safe for concurrent use.
type Progress struct {
	w    io.Writer
	term Terminal
	// shown says a bar line is on the screen (terminal only).
	shown bool
	// lastLabel and lastTenth are what the last plain line said.
	lastLabel string
	lastTenth int
}

// NewProgress returns a Progress writing to w, drawing bars only when w is
// a terminal.
func NewProgress(w io.Writer) *Progress { return NewProgressOn(w, TerminalOf(w)) }

// NewProgressOn returns a Progress writing to w as if w were term (tests
// pass a fake terminal).
func NewProgressOn(w io.Writer, term Terminal) *Progress {
	if term.TTY && term.Width <= 0 {
		term.Width = defaultWidth
	}
	return &Progress{w: w, term: term, lastTenth: -1}
}

// Live reports whether the output is a terminal, where Update redraws in
// place; callers with a stream of figures (a byte counter) update only
// then, and print a summary at the end otherwise.
func (p *Progress) Live() bool { return p.term.TTY }

// Update shows frac (0–1) done with a label; a negative frac means the
// total is unknown and only the label is shown.
func (p *Progress) Update(frac float64, label string) {
	if p.term.TTY {
		fmt.Fprint(p.w, "\r"+barLine(frac, label, p.term.Width)+"\x1b[K")
		p.shown = true
		return
	}
	tenth := -1
	if frac >= 0 {
		tenth = int(min(frac, 1) * 10)
	}
	if label == p.lastLabel && tenth == p.lastTenth {
		return
	}
	p.lastLabel, p.lastTenth = label, tenth
	if frac >= 0 {
		fmt.Fprintf(p.w, "%s %3.0f%%\n", label, 100*min(max(frac, 0), 1))
	} else {
		fmt.Fprintln(p.w, label)
	}
}

// Println prints a line; on a terminal above the bar, which the next
// Update draws again.
func (p *Progress) Println(line string) {
	p.clear()
	fmt.Fprintln(p.w, line)
}

// Done removes the bar and prints a last line (if not empty).
func (p *Progress) Done(line string) {
	p.clear()
	if line != "" {
		fmt.Fprintln(p.w, line)
	}
}

func (p *Progress) clear() {
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.shown = false
	}
}

// barLine fits a label and, for a known fraction, a bar into width
// columns: the bar takes what the label leaves, between 10 and 50 cells;
// the label is cut with an ellipsis when the line would not fit.
func barLine(frac float64, label string, width int) string {
	if frac < 0 {
		return truncate(label, width-1)
	}
	const pct = 7 // "] 100%" plus the opening bracket
	bar := min(max(width-1-utf8.RuneCountInString(label)-1-pct, 10), 50)
	label = truncate(label, width-1-1-pct-bar)
	return label + " " + progressBar(frac, bar)
}

// truncate cuts s to at most n runes, ending in "…" when cut.
func truncate(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return strings.TrimRight(string(r[:n-1]), " ") + "…"
}

// countingReader reports how much of a body has been read.
type countingReader struct {
	r      io.Reader
	n      int64
	onRead func(n int64)
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	c.onRead(c.n)
	return n, err
}

// csvCounter passes CSV through and counts its records (newlines outside
// quotes) and bytes.
type csvCounter struct {
	w        io.Writer
	bytes    int64
	records  int
	inQuotes bool
	onWrite  func()
}

func (c *csvCounter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	for _, ch := range b[:n] {
		switch {
		case ch == '"':
			c.inQuotes = !c.inQuotes
		case ch == '\n' && !c.inQuotes:
			c.records++
		}
	}
	c.bytes += int64(n)
	c.onWrite()
	return n, err
}
