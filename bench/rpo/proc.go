package rpo

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// agentProc is a `ferry agent` process.
type agentProc struct {
	cmd  *exec.Cmd
	log  string
	done chan error
}

// startAgent runs command with the state directory, the device and the
// eBPF tracker; its output goes to logPath.
func startAgent(command []string, state, dev, logPath string) (*agentProc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("agent log: %w", err)
	}
	args := append(append([]string{}, command[1:]...), "--state-dir", state, "--disk", dev, "--tracker", "ebpf")
	cmd := exec.Command(command[0], args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Its own process group, so stopping it never reaches the bench.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start the agent (%s): %w", command[0], err)
	}
	a := &agentProc{cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() { a.done <- cmd.Wait(); lf.Close() }()
	return a, nil
}

func (a *agentProc) pid() int { return a.cmd.Process.Pid }

// stop ends the agent: SIGTERM, then SIGKILL after 10 s.
func (a *agentProc) stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

// tail returns the end of the agent's log, for errors.
func (a *agentProc) tail() string {
	b, err := os.ReadFile(a.log)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\nagent log (end):\n" + string(bytes.TrimSpace(b))
}

// procCPU is the user+system CPU time of process pid (not its children).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("agent CPU: %w", err)
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime and stime from a /proc/PID/stat line. USER_HZ
// is 100 on Linux.
func parseStatCPU(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("agent CPU: malformed stat %q", s)
	}
	// After the name: state is [0], utime [11], stime [12].
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("agent CPU: stat has %d fields after the name", len(f))
	}
	var ticks int64
	for _, k := range []int{11, 12} {
		v, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("agent CPU: stat field %d: %w", k, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// procStatus returns a "kB" field of /proc/PID/status in bytes.
func procStatus(pid int, key string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("agent memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != key {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) != 2 || fs[1] != "kB" {
			return 0, fmt.Errorf("agent memory: %s is %q", key, v)
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("agent memory: %s: %w", key, err)
		}
		return n << 10, nil
	}
	return 0, fmt.Errorf("agent memory: no %s in /proc/%d/status", key, pid)
}

// rssSampler reads the agent's VmRSS every 250 ms and keeps the largest.
type rssSampler struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	max   int64
}

func startRSSSampler(pid int) *rssSampler {
	s := &rssSampler{stopc: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if v, err := procStatus(pid, "VmRSS"); err == nil {
				s.max = max(s.max, v)
			}
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the largest RSS seen.
func (s *rssSampler) stop() int64 {
	close(s.stopc)
	s.wg.Wait()
	return s.max
}
