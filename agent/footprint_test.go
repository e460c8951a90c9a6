package agent

import (
	"math"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLowerPriority runs LowerPriority in a child process (it cannot be
// undone without privileges) and checks every thread's niceness and IO
// priority there.
func TestLowerPriority(t *testing.T) {
	if os.Getenv("FERRY_TEST_LOWER_PRIORITY") == "1" {
		if err := LowerPriority(); err != nil {
			t.Fatal(err)
		}
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			cur, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
			if err != nil {
				t.Fatal(err)
			}
			if nice := 20 - cur; nice != AgentNice {
				t.Errorf("thread %d: nice %d, want %d", tid, nice, AgentNice)
			}
			p, _, e := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProc, uintptr(tid), 0)
			if e != 0 {
				t.Fatal(e)
			}
			if p != ioprioClassBE<<13|ioprioLowest {
				t.Errorf("thread %d: IO priority %#x, want best-effort 7", tid, p)
			}
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLowerPriority$", "-test.v")
	cmd.Env = append(os.Environ(), "FERRY_TEST_LOWER_PRIORITY=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestLimitMemory(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	for _, tc := range []struct {
		env  string
		want int64
	}{
		{"", MemoryLimit},
		{"100MiB", math.MaxInt64}, // the operator's: the runtime read it at start, LimitMemory leaves it
	} {
		t.Setenv("GOMEMLIMIT", tc.env)
		debug.SetMemoryLimit(math.MaxInt64)
		LimitMemory()
		if got := debug.SetMemoryLimit(-1); got != tc.want {
			t.Errorf("GOMEMLIMIT=%q: limit %d, want %d", tc.env, got, tc.want)
		}
	}
}
