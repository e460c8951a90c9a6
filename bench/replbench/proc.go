package replbench

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// procCPU is the user+system CPU of a process and of its waited-for
// children (from /proc/PID/stat; rsync's daemon waits for the process it
// forks per connection), 0 when unreadable.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// Fields after the name: state is [0]; utime [11], stime [12],
	// cutime [13], cstime [14].
	if len(f) < 15 {
		return 0
	}
	var ticks int64
	for _, k := range []int{11, 12, 13, 14} {
		v, _ := strconv.ParseInt(f[k], 10, 64)
		ticks += v
	}
	// USER_HZ is 100 on Linux.
	return time.Duration(ticks) * 10 * time.Millisecond
}

var sentRe = regexp.MustCompile(`Total bytes sent: ([0-9,.]+)`)

// parseSent reads "Total bytes sent" from rsync --stats.
func parseSent(out string) int64 {
	m := sentRe.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseInt(strings.NewReplacer(",", "", ".", "").Replace(m[1]), 10, 64)
	return v
}
