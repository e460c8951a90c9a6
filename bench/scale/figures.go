package scale

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Figure is one measured value, simple enough for a suite runner's table.
type Figure struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// MaxAgents bounds one run's agent count: past it the simulator alone
// would need more memory and descriptors than a test machine has.
const MaxAgents = 100_000

// ParseAgents parses a comma-separated list of agent counts
// ("1000,3000,10000"). Each must be a whole number from 1 to MaxAgents;
// duplicates are refused.
func ParseAgents(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("agents: empty list; want counts like 1000,3000,10000")
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil || n < 1 || n > MaxAgents {
			return nil, fmt.Errorf("agents: %q is not a whole number from 1 to %d", f, MaxAgents)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("agents: %d appears twice", n)
		}
		out = append(out, n)
	}
	return out, nil
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of ds by the
// nearest-rank method, 0 for no samples. ds is not modified.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return percentileSorted(s, p)
}

func percentileSorted(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	p = min(max(p, 0), 100)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// Summary is the distribution of a set of latencies.
type Summary struct {
	Count         int
	P50, P99, Max time.Duration
}

// Summarize returns the count, p50, p99 and maximum of ds.
func Summarize(ds []time.Duration) Summary {
	if len(ds) == 0 {
		return Summary{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return Summary{Count: len(s), P50: percentileSorted(s, 50), P99: percentileSorted(s, 99), Max: s[len(s)-1]}
}

// recorder collects latencies from many goroutines while on.
type recorder struct {
	mu sync.Mutex
	on bool
	ds []time.Duration
}

func (r *recorder) add(d time.Duration) {
	r.mu.Lock()
	if r.on {
		r.ds = append(r.ds, d)
	}
	r.mu.Unlock()
}

func (r *recorder) start() {
	r.mu.Lock()
	r.on, r.ds = true, r.ds[:0]
	r.mu.Unlock()
}

func (r *recorder) stop() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = false
	return slices.Clone(r.ds)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mib(n int64) float64 { return float64(n) / (1 << 20) }
