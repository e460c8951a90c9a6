package scale

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrymigrate/ferry/bench/harness"
)

// serverProc is a `ferry server --dev` child process (harness.StartServer)
// whose resident set the bench samples.
type serverProc struct {
	*harness.ServerProcess

	mu      sync.Mutex
	rssMax  int64 // highest VmRSS sampled; guarded by mu
	samples []rssSample
}

type rssSample struct {
	at  time.Time
	rss int64
}

// startServer starts bin as `ferry server --dev` on loopback with its data
// in dir and waits for its banner (admin token, CA fingerprint) and API.
func startServer(ctx context.Context, bin, dir string, extra ...string) (*serverProc, error) {
	s, err := harness.StartServer(ctx, bin, dir, extra...)
	if err != nil {
		return nil, err
	}
	return &serverProc{ServerProcess: s}, nil
}

// pid is the server's process id.
func (s *serverProc) pid() int { return s.PID() }

// stop ends the server with SIGTERM, then SIGKILL after 30 s; stopping
// a stopped server does nothing.
func (s *serverProc) stop() { s.Stop() }

// alive reports whether the server process has not exited.
func (s *serverProc) alive() bool { return s.Alive() }

// logTail returns the end of the server's log.
func (s *serverProc) logTail() string { return s.LogTail() }

// logSize is the server log's current size.
func (s *serverProc) logSize() int64 {
	fi, err := os.Stat(s.LogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logCounts counts the server's log lines at WARN and ERROR level in the
// first upTo bytes of its log (what it wrote before the agents stopped)
// and returns the first few distinct messages.
func (s *serverProc) logCounts(upTo int64) (warns, errs int, first []string) {
	f, err := os.Open(s.LogPath)
	if err != nil {
		return 0, 0, nil
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(io.LimitReader(f, upTo))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		isWarn, isErr := bytes.Contains(line, []byte("level=WARN")), bytes.Contains(line, []byte("level=ERROR"))
		if !isWarn && !isErr {
			continue
		}
		if isWarn {
			warns++
		} else {
			errs++
		}
		msg := string(line)
		if i := strings.Index(msg, "msg="); i >= 0 {
			msg = msg[i:]
			if j := strings.Index(msg, " server="); j > 0 {
				msg = msg[:j]
			}
		}
		if !seen[msg] && len(first) < 5 {
			seen[msg] = true
			first = append(first, msg)
		}
	}
	return warns, errs, first
}

// sampleRSS records the server's resident set every interval until ctx
// ends.
func (s *serverProc) sampleRSS(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if st, err := readStatus(s.pid()); err == nil {
			s.mu.Lock()
			s.rssMax = max(s.rssMax, st.rss)
			s.samples = append(s.samples, rssSample{time.Now(), st.rss})
			s.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// rssBetween returns the mean and highest RSS sampled in [from, to].
func (s *serverProc) rssBetween(from, to time.Time) (mean, peak int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sum, n int64
	for _, x := range s.samples {
		if x.at.Before(from) || x.at.After(to) {
			continue
		}
		sum += x.rss
		n++
		peak = max(peak, x.rss)
	}
	if n == 0 {
		return 0, 0
	}
	return sum / n, peak
}

// procStatus is what the bench reads of a process from /proc.
type procStatus struct {
	rss, hwm int64 // bytes
	threads  int
}

func readStatus(pid int) (procStatus, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procStatus{}, err
	}
	defer f.Close()
	return parseStatus(f)
}

// parseStatus reads VmRSS, VmHWM and Threads from a /proc/PID/status.
func parseStatus(r io.Reader) (procStatus, error) {
	var st procStatus
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			st.rss = n << 10
			found++
		case "VmHWM":
			st.hwm = n << 10
			found++
		case "Threads":
			st.threads = int(n)
			found++
		}
	}
	if found < 3 {
		return st, errors.New("status: VmRSS, VmHWM or Threads missing")
	}
	return st, nil
}

// procCPU returns a process's user+system CPU time from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime and stime from a /proc/PID/stat line.
func parseStatCPU(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	f := strings.Fields(s[i+1:])
	// After the name: state is [0]; utime [11], stime [12].
	if len(f) < 13 {
		return 0, errors.New("stat: too few fields")
	}
	var ticks int64
	for _, k := range []int{11, 12} {
		v, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat: field %d: %w", k+3, err)
		}
		ticks += v
	}
	// USER_HZ is 100 on Linux.
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// openFDs counts a process's open file descriptors.
func openFDs(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	return len(ents)
}

// raiseFileLimit raises this process's RLIMIT_NOFILE (soft and, as root,
// hard) to at least want; children such as the server inherit it.
func raiseFileLimit(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read the open-file limit: %w", err)
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	nrOpen := uint64(1 << 20)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
			nrOpen = v
		}
	}
	next := syscall.Rlimit{Cur: min(want, nrOpen), Max: max(lim.Max, min(want, nrOpen))}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
		// Not root: go as far as the hard limit.
		next = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		if err2 := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err2 != nil {
			return lim.Cur, fmt.Errorf("raise the open-file limit: %w", err)
		}
	}
	if next.Cur < want {
		return next.Cur, fmt.Errorf("the open-file limit is %d, the run needs about %d; raise it (ulimit -n, or run as root)", next.Cur, want)
	}
	return next.Cur, nil
}
