package agent

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"

	"golang.org/x/sys/unix"
)

// Footprint the agent gives itself when no service manager set one (the
// systemd unit says Nice=10 and IOSchedulingClass=idle).
const (
	// AgentNice is the agent's CPU niceness.
	AgentNice = 10
	// ioprioClassBE and ioprioLowest are IOPRIO_CLASS_BE and its lowest
	// level (7) from linux/ioprio.h.
	ioprioClassBE = 2
	ioprioLowest  = 7
	ioprioWhoProc = 1 // IOPRIO_WHO_PROCESS
)

// MemoryLimit is the soft limit LimitMemory gives the Go runtime. The
// agent's live memory is about 30 MiB while it replicates writes; in an
// initial sync, chunks read, compressed and sent at hundreds of MB/s leave
// garbage faster than the default collector pace returns it, and the
// process peaked at 83 MiB. Under the limit the collector runs sooner
// instead; the limit is soft, so a larger live set is never refused.
const MemoryLimit = 48 << 20

// LimitMemory sets MemoryLimit as the runtime's soft memory limit, unless
// the operator set one with GOMEMLIMIT.
func LimitMemory() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(MemoryLimit)
	}
}

// UnderSystemd reports whether systemd started this process (it sets
// INVOCATION_ID for every unit it runs).
func UnderSystemd() bool { return os.Getenv("INVOCATION_ID") != "" }

// LowerPriority makes every thread of the process nice AgentNice for the
// CPU and best-effort at the lowest level for IO, so the source's own work
// goes first. Linux keeps both per thread, and new threads inherit them
// from the thread that creates them, so it is best called early. A thread
// already at a lower priority is left alone.
func LowerPriority() error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("lower priority: %w", err)
	}
	var errs []error
	prio := ioprioClassBE<<13 | ioprioLowest
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		cur, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		// The raw syscall returns 20 - nice.
		if err == nil && 20-cur < AgentNice {
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, AgentNice); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("nice thread %d: %w", tid, err))
			}
		}
		if _, _, e := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProc, uintptr(tid), uintptr(prio)); e != 0 && e != unix.ESRCH {
			errs = append(errs, fmt.Errorf("IO priority of thread %d: %w", tid, e))
		}
	}
	return errors.Join(errs...)
}
