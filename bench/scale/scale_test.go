package scale

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestParseAgents(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr string
	}{
		{"1000,3000,10000", []int{1000, 3000, 10000}, ""},
		{" 200 , 1_000 ", []int{200, 1000}, ""},
		{"5", []int{5}, ""},
		{"", nil, "empty list"},
		{"0", nil, `"0" is not a whole number`},
		{"-3", nil, "not a whole number"},
		{"ten", nil, `"ten"`},
		{"1000,1000", nil, "appears twice"},
		{"100001", nil, "from 1 to 100000"},
		{"10,", nil, `"" is not`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAgents(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseAgents(%q) = %v, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || len(got) != len(tt.want) {
				t.Fatalf("ParseAgents(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("ParseAgents(%q) = %v; want %v", tt.in, got, tt.want)
				}
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // 100..1, unsorted
	}
	tests := []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 99, 0},
		{"one", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		{"median of four is the second", ms(4, 1, 3, 2), 50, 2 * time.Millisecond},
		{"p99 of 100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p100 is the max", ms(hundred...), 100, 100 * time.Millisecond},
		{"p0 is the min", ms(hundred...), 0, 1 * time.Millisecond},
		{"p99 of 10 is the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]time.Duration(nil), tt.in...)
			if got := Percentile(tt.in, tt.p); got != tt.want {
				t.Fatalf("Percentile(%v, %v) = %v, want %v", tt.in, tt.p, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.in[i] {
					t.Fatal("Percentile changed its input")
				}
			}
		})
	}
	s := Summarize(ms(5, 1, 9, 3))
	if s.Count != 4 || s.P50 != 3*time.Millisecond || s.P99 != 9*time.Millisecond || s.Max != 9*time.Millisecond {
		t.Fatalf("Summarize = %+v", s)
	}
}

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Agents) != 3 || o.Agents[2] != 10000 || o.Steady != 60*time.Second || o.DiskBytes != 64<<20 || o.Pattern != PatternLog {
		t.Fatalf("defaults: %+v", o)
	}
	q, err := Options{Quick: true}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if len(q.Agents) != 2 || q.Agents[0] != 200 || q.Agents[1] != 1000 || q.Steady != 15*time.Second || q.Warmup != 5*time.Second {
		t.Fatalf("quick defaults: %+v", q)
	}
	bad := []struct {
		name    string
		o       Options
		wantErr string
	}{
		{"zero agents", Options{Agents: []int{0}}, "agents"},
		{"short window", Options{Steady: time.Millisecond}, "steady window"},
		{"odd disk", Options{DiskBytes: 5<<20 + 1}, "disk size"},
		{"tiny disk", Options{DiskBytes: 1 << 20}, "disk size"},
		{"data not aligned", Options{DataBytes: 1000}, "data size"},
		{"data over 1 MiB", Options{DataBytes: 2 << 20}, "data size"},
		{"pattern", Options{Pattern: "zigzag"}, "write pattern"},
		{"write sizes", Options{MinWrite: 8192, MaxWrite: 4096}, "write sizes"},
		{"unaligned write", Options{MinWrite: 1000}, "write sizes"},
		{"rate", Options{WriteBytesPerSec: -1}, "write rate"},
		{"source IPs", Options{SourceIPs: 300}, "source IPs"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.o.withDefaults(); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("withDefaults(%+v) = %v, want an error about %q", tt.o, err, tt.wantErr)
			}
		})
	}
}

func TestParseProc(t *testing.T) {
	status := "Name:\tferry\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t12\n"
	st, err := parseStatus(strings.NewReader(status))
	if err != nil || st.rss != 100<<20 || st.hwm != 200<<20 || st.threads != 12 {
		t.Fatalf("parseStatus = %+v, %v", st, err)
	}
	if _, err := parseStatus(strings.NewReader("Name:\tx\n")); err == nil {
		t.Fatal("parseStatus of a status without VmRSS succeeded")
	}
	// The command name may hold spaces and parentheses.
	stat := "4242 (ferry (x) y) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0"
	cpu, err := parseStatCPU(stat)
	if err != nil || cpu != 2*time.Second {
		t.Fatalf("parseStatCPU = %v, %v; want 2s", cpu, err)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 u s"} {
		if _, err := parseStatCPU(bad); err == nil {
			t.Fatalf("parseStatCPU(%q) succeeded", bad)
		}
	}
}

func TestOffsetStaysOnTheDisk(t *testing.T) {
	for _, pattern := range []string{PatternLog, PatternRandom} {
		o, err := Options{Pattern: pattern, DiskBytes: 16 << 20}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		a := &simAgent{f: &fleet{o: o}}
		rng := newTestRand()
		for i := 0; i < 10000; i++ {
			n := int64(4096 * (1 + i%4))
			off := a.offset(rng, n)
			if off < 0 || off%blockSize != 0 || off+n > o.DiskBytes {
				t.Fatalf("%s: offset %d for %d bytes on a %d-byte disk", pattern, off, n, o.DiskBytes)
			}
		}
	}
}

func newTestRand() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }
