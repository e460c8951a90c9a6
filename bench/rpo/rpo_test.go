package rpo

import (
	"testing"
	"time"
)

func TestMatch(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tests := []struct {
		name      string
		writes    []sourceWrite
		seen      []written
		acks      []acked
		unmatched int
		p50, max  float64
	}{
		{
			name:   "each write in its own record, acknowledged later",
			writes: []sourceWrite{{off: 0, stamp: 1, done: at(0)}, {off: 4096, stamp: 2, done: at(10)}},
			seen:   []written{{rec: 5, off: 0, stamp: 1}, {rec: 6, off: 4096, stamp: 2}},
			acks:   []acked{{seq: 5, t: at(100)}, {seq: 6, t: at(310)}},
			p50:    0.1, max: 0.3,
		},
		{
			name:   "a cumulative ack covers every record below it",
			writes: []sourceWrite{{off: 0, stamp: 1, done: at(0)}, {off: 4096, stamp: 2, done: at(0)}},
			seen:   []written{{rec: 5, off: 0, stamp: 1}, {rec: 6, off: 4096, stamp: 2}},
			acks:   []acked{{seq: 9, t: at(200)}},
			p50:    0.2, max: 0.2,
		},
		{
			name: "a newer write to the same block carries the older one",
			writes: []sourceWrite{
				{off: 0, stamp: 1, done: at(0)},
				{off: 0, stamp: 3, done: at(50)},
			},
			seen: []written{{rec: 7, off: 0, stamp: 3}},
			acks: []acked{{seq: 7, t: at(150)}},
			p50:  0.1, max: 0.15,
		},
		{
			name:      "an older stamp does not carry a newer write",
			writes:    []sourceWrite{{off: 0, stamp: 3, done: at(0)}},
			seen:      []written{{rec: 7, off: 0, stamp: 1}},
			acks:      []acked{{seq: 7, t: at(150)}},
			unmatched: 1,
		},
		{
			name:      "seen but never acknowledged is unmatched",
			writes:    []sourceWrite{{off: 0, stamp: 1, done: at(0)}},
			seen:      []written{{rec: 8, off: 0, stamp: 1}},
			acks:      []acked{{seq: 7, t: at(150)}},
			unmatched: 1,
		},
		{
			name:   "the earliest durable record wins when the block came twice",
			writes: []sourceWrite{{off: 0, stamp: 1, done: at(0)}},
			seen:   []written{{rec: 9, off: 0, stamp: 2}, {rec: 4, off: 0, stamp: 1}},
			acks:   []acked{{seq: 4, t: at(40)}, {seq: 9, t: at(400)}},
			p50:    0.04, max: 0.04,
		},
		{
			name:   "an ack noted before the writer noted completion counts as zero",
			writes: []sourceWrite{{off: 0, stamp: 1, done: at(100)}},
			seen:   []written{{rec: 1, off: 0, stamp: 1}},
			acks:   []acked{{seq: 1, t: at(90)}},
		},
		{
			name:      "a different block does not match",
			writes:    []sourceWrite{{off: 8192, stamp: 1, done: at(0)}},
			seen:      []written{{rec: 1, off: 0, stamp: 1}},
			acks:      []acked{{seq: 1, t: at(90)}},
			unmatched: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := match(tt.writes, tt.seen, tt.acks)
			if st.Writes != len(tt.writes) || st.Unmatched != tt.unmatched {
				t.Fatalf("writes %d unmatched %d, want %d and %d", st.Writes, st.Unmatched, len(tt.writes), tt.unmatched)
			}
			if !near(st.P50, tt.p50) || !near(st.Max, tt.max) {
				t.Errorf("p50 %v max %v, want %v and %v", st.P50, st.Max, tt.p50, tt.max)
			}
		})
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestMatcherObserver(t *testing.T) {
	m := NewMatcher("s-1", 0)
	now := time.Unix(100, 0)
	m.now = func() time.Time { return now }
	// A 12 KiB record at an offset 4 KiB into the disk: stamped blocks at
	// 0 and 8 KiB of the record, an unstamped one between.
	data := make([]byte, 3*blockSize)
	putStamp(data[0:], 7)
	putStamp(data[2*blockSize:], 8)
	m.Written("s-1", 0, 42, blockSize, data)
	m.Written("s-2", 0, 42, 0, data) // another server: ignored
	m.Written("s-1", 1, 42, 0, data) // another disk: ignored
	m.wrote(blockSize, 7, now.Add(-300*time.Millisecond))
	m.wrote(3*blockSize, 8, now.Add(-100*time.Millisecond))
	m.wrote(2*blockSize, 9, now) // never sent
	m.Durable("s-1", 0, 42)
	m.Durable("s-1", 0, 41) // acks never go back
	st := m.Match()
	if st.Writes != 3 || st.Unmatched != 1 || !near(st.Max, 0.3) || !near(st.P50, 0.1) {
		t.Fatalf("got %+v, want 3 writes, 1 unmatched, p50 0.1 s, max 0.3 s", st)
	}
	if un := m.unmatched(); len(un) != 1 || un[0].stamp != 9 {
		t.Fatalf("unmatched %+v, want the write with stamp 9", un)
	}
}

func TestStamp(t *testing.T) {
	b := make([]byte, blockSize)
	if _, ok := readStamp(b); ok {
		t.Fatal("a zero block has no stamp")
	}
	putStamp(b, 1<<40+5)
	if s, ok := readStamp(b); !ok || s != 1<<40+5 {
		t.Fatalf("read %d %v back", s, ok)
	}
	if _, ok := readStamp(b[:10]); ok {
		t.Fatal("a short block has no stamp")
	}
}

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name, stat string
		want       time.Duration
		err        bool
	}{
		{"name with spaces and parens", "1234 (ferry (x) y) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0", 2 * time.Second, false},
		{"no closing paren", "1234 (ferry S 1", 0, true},
		{"too few fields", "1 (a) S 1 2 3", 0, true},
		{"not a number", "1 (a) S 1 2 3 4 5 6 7 8 9 10 x 50 0 0", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU(tt.stat)
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("got %v, %v; want %v, error %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestQuantile(t *testing.T) {
	v := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tt := range []struct{ q, want float64 }{{0.5, 5}, {0.99, 10}, {0.1, 1}, {0, 1}, {1, 10}} {
		if got := quantile(v, tt.q); got != tt.want {
			t.Errorf("quantile %v = %v, want %v", tt.q, got, tt.want)
		}
	}
}
