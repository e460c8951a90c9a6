package scale

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/protocol"
)

// Options size a run; zero values take the defaults.
type Options struct {
	// Agents are the agent counts to measure, one fresh server each
	// (default 1000, 3000, 10000; with Quick 200, 1000).
	Agents []int
	// Quick shortens the windows (15 s steady, 5 s warm-up) and, when
	// Agents is empty, measures 200 and 1000 agents.
	Quick bool
	// Steady is the measuring window (default 60 s; Quick 15 s).
	Steady time.Duration
	// Warmup runs the writes before the window opens (default 15 s; Quick
	// 5 s).
	Warmup time.Duration
	// DiskBytes is each agent's virtual disk (default 64 MiB): a multiple
	// of 1 MiB.
	DiskBytes int64
	// DataBytes is the non-zero start of each disk the initial sync sends
	// (default 64 KiB): a multiple of 4 KiB, at most 1 MiB and DiskBytes.
	DataBytes int64
	// WriteBytesPerSec is each agent's mean write rate after its initial
	// sync (default 4096).
	WriteBytesPerSec int64
	// Pattern is where the writes land: PatternLog (default) appends to a
	// log region and now and then rewrites a block of file-system
	// metadata, as an idle server does; PatternRandom spreads them over
	// the whole disk, the worst case for a chunk store that rewrites a
	// whole chunk for a small write.
	Pattern string
	// MinWrite and MaxWrite bound each write (default 4 KiB and 16 KiB):
	// multiples of 4 KiB.
	MinWrite, MaxWrite int
	// PairWorkers and ConnectWorkers are how many agents pair, or connect
	// and sync, at once (default 32 and 64).
	PairWorkers, ConnectWorkers int
	// SourceIPs is how many loopback source addresses (127.0.0.1, .2, …)
	// the agents spread over so no one address runs out of ephemeral
	// ports (default 8).
	SourceIPs int
	// ListInterval is the gap between filtered server list calls in the
	// window (default 250 ms).
	ListInterval time.Duration
	// Binary is the ferry executable that runs the server (default: this
	// executable).
	Binary string
	// Dir holds each run's server data; "" means a new temporary directory.
	Dir string
	// ServerCPUProfile, when set, is where each run's server writes a CPU
	// profile of its whole life (go tool pprof); the agent count is
	// inserted before the extension ("cpu.pprof" → "cpu-3000.pprof").
	ServerCPUProfile string
	// Logf receives progress; nil discards it.
	Logf func(format string, args ...any)
}

// Write patterns.
const (
	PatternLog    = "log"
	PatternRandom = "random"
)

// withDefaults fills in zero fields and checks the rest.
func (o Options) withDefaults() (Options, error) {
	if len(o.Agents) == 0 {
		o.Agents = []int{1000, 3000, 10000}
		if o.Quick {
			o.Agents = []int{200, 1000}
		}
	}
	for _, n := range o.Agents {
		if n < 1 || n > MaxAgents {
			return o, fmt.Errorf("agents: %d is not from 1 to %d", n, MaxAgents)
		}
	}
	def := func(d *time.Duration, normal, quick time.Duration) {
		if *d == 0 {
			*d = normal
			if o.Quick {
				*d = quick
			}
		}
	}
	def(&o.Steady, 60*time.Second, 15*time.Second)
	def(&o.Warmup, 15*time.Second, 5*time.Second)
	def(&o.ListInterval, 250*time.Millisecond, 250*time.Millisecond)
	if o.Steady < time.Second || o.Warmup < 0 || o.ListInterval < time.Millisecond {
		return o, fmt.Errorf("steady window %v must be at least 1 s, warm-up %v not negative, list interval %v at least 1 ms", o.Steady, o.Warmup, o.ListInterval)
	}
	if o.DiskBytes == 0 {
		o.DiskBytes = 64 << 20
	}
	if o.DataBytes == 0 {
		o.DataBytes = 64 << 10
	}
	if o.DiskBytes < 4*syncChunk || o.DiskBytes%syncChunk != 0 || o.DiskBytes > 1<<40 {
		return o, fmt.Errorf("disk size %d: want a multiple of 1 MiB from 4 MiB to 1 TiB", o.DiskBytes)
	}
	if o.DataBytes < blockSize || o.DataBytes%blockSize != 0 || o.DataBytes > syncChunk {
		return o, fmt.Errorf("data size %d: want a multiple of 4 KiB from 4 KiB to 1 MiB", o.DataBytes)
	}
	if o.WriteBytesPerSec == 0 {
		o.WriteBytesPerSec = 4096
	}
	switch o.Pattern {
	case "":
		o.Pattern = PatternLog
	case PatternLog, PatternRandom:
	default:
		return o, fmt.Errorf("write pattern %q: want %s or %s", o.Pattern, PatternLog, PatternRandom)
	}
	if o.MinWrite == 0 {
		o.MinWrite = 4 << 10
	}
	if o.MaxWrite == 0 {
		o.MaxWrite = 16 << 10
	}
	if o.WriteBytesPerSec < 1 || o.WriteBytesPerSec > 100<<20 {
		return o, fmt.Errorf("write rate %d B/s per agent: want 1 B/s to 100 MiB/s", o.WriteBytesPerSec)
	}
	if o.MinWrite < blockSize || o.MinWrite%blockSize != 0 || o.MaxWrite < o.MinWrite || o.MaxWrite%blockSize != 0 || int64(o.MaxWrite) > o.DiskBytes/2 || o.MaxWrite > 1<<20 {
		return o, fmt.Errorf("write sizes %d..%d: want multiples of 4 KiB, min ≤ max ≤ 1 MiB and half the disk", o.MinWrite, o.MaxWrite)
	}
	if o.PairWorkers == 0 {
		o.PairWorkers = 32
	}
	if o.ConnectWorkers == 0 {
		o.ConnectWorkers = 64
	}
	if o.SourceIPs == 0 {
		o.SourceIPs = 8
	}
	if o.PairWorkers < 1 || o.ConnectWorkers < 1 || o.SourceIPs < 1 || o.SourceIPs > 250 {
		return o, fmt.Errorf("pair workers %d and connect workers %d must be positive, source IPs %d from 1 to 250", o.PairWorkers, o.ConnectWorkers, o.SourceIPs)
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o, nil
}

// Result is a whole run: one Measurement per agent count.
type Result struct {
	Options struct {
		DiskBytes        int64   `json:"disk_bytes"`
		DataBytes        int64   `json:"data_bytes"`
		WriteBytesPerSec int64   `json:"write_bytes_per_sec"`
		Pattern          string  `json:"pattern"`
		SteadySeconds    float64 `json:"steady_seconds"`
	} `json:"options"`
	Runs []Measurement `json:"runs"`
}

// Measurement is the figures of one agent count.
type Measurement struct {
	Agents  int      `json:"agents"`
	Figures []Figure `json:"figures"`
}

// Figure returns the named figure of r and whether it exists.
func (r Measurement) Figure(name string) (Figure, bool) {
	for _, f := range r.Figures {
		if f.Name == name {
			return f, true
		}
	}
	return Figure{}, false
}

// Figures returns every run's figures with the agent count in the name
// ("scale 1000 agents: ack p99"), for a suite's single table.
func (r *Result) Figures() []Figure {
	var out []Figure
	for _, run := range r.Runs {
		for _, f := range run.Figures {
			f.Name = fmt.Sprintf("scale %d agents: %s", run.Agents, f.Name)
			out = append(out, f)
		}
	}
	return out
}

// fileLimitFor is the open-file limit a run of agents needs in each of
// the simulator and the server.
func fileLimitFor(agents int) uint64 {
	return (uint64(agents) + 4096) * 4 / 3
}

// Run measures each agent count against a fresh server and prints one
// table per count to w.

func Run(ctx context.Context, o Options, w io.Writer) (*Result, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if runtime.GOOS != "linux" {
		return nil, errors.New("bench scale reads the server's figures from /proc: Linux only")
	}
	if o.Binary == "" {
		if o.Binary, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find the ferry executable: %w", err)
		}
	}
	most := 0
	for _, n := range o.Agents {
		most = max(most, n)
	}
	// Each agent holds one connection here and one in the server, which
	// inherits the limit; the server's replica store keeps at most a
	// quarter of the limit in journal segments open, so a limit of 4/3 of
	// the agents plus room for everything else serves both processes. The
	// room was 2,048 until a 10,000-agent run whose point-in-time pass
	// (ten minutes in) opened snapshots' files past it: "too many open
	// files" ended 3,290 sessions.
	if _, err := raiseFileLimit(fileLimitFor(most)); err != nil {
		return nil, err
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "ferry-scale")
		if err != nil {
			return nil, fmt.Errorf("temporary directory: %w", err)
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	res := &Result{}
	res.Options.DiskBytes, res.Options.DataBytes = o.DiskBytes, o.DataBytes
	res.Options.WriteBytesPerSec, res.Options.SteadySeconds = o.WriteBytesPerSec, o.Steady.Seconds()
	res.Options.Pattern = o.Pattern
	for _, n := range o.Agents {
		dir, err := os.MkdirTemp(o.Dir, fmt.Sprintf("agents-%d-", n))
		if err != nil {
			return res, fmt.Errorf("run directory: %w", err)
		}
		run, err := runOne(ctx, o, n, dir)
		os.RemoveAll(dir)
		if err != nil {
			return res, fmt.Errorf("%d agents: %w", n, err)
		}
		res.Runs = append(res.Runs, run)
		printRun(w, o, run)
	}
	return res, nil
}

// runOne measures n agents against a new server whose data is in dir.
func runOne(ctx context.Context, o Options, n int, dir string) (Measurement, error) {
	run := Measurement{Agents: n}
	add := func(name string, v float64, unit string) {
		run.Figures = append(run.Figures, Figure{Name: name, Value: v, Unit: unit})
	}
	o.Logf("%d agents: starting the server", n)
	var extra []string
	if o.ServerCPUProfile != "" {
		ext := filepath.Ext(o.ServerCPUProfile)
		extra = []string{"--cpuprofile", fmt.Sprintf("%s-%d%s", strings.TrimSuffix(o.ServerCPUProfile, ext), n, ext)}
	}
	srv, err := startServer(ctx, o.Binary, dir, extra...)
	if err != nil {
		return run, err
	}
	defer srv.stop()
	sctx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	go srv.sampleRSS(sctx, 500*time.Millisecond)

	pin, err := pki.ParseFingerprint(srv.Fingerprint)
	if err != nil {
		return run, err
	}
	admin, err := api.NewClient(srv.APIURL, srv.Token, pki.ClientTLSConfig(pin, nil))
	if err != nil {
		return run, err
	}
	it, err := admin.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{
		Name: "bench-scale", MaxUses: n, ExpiresInSeconds: 4 * 3600, Tags: map[string]string{"bench": "scale"},
	})
	if err != nil {
		return run, fmt.Errorf("create an install token: %w", err)
	}
	f := &fleet{o: o, apiURL: srv.APIURL, pin: pin, install: it.Secret}
	f.random = make([]byte, 1<<20)
	rand.Read(f.random)
	f.image = makeImage(int(o.DataBytes))
	f.compPool.New = func() any {
		c, err := protocol.NewCompressor(protocol.S2) // as an agent's initial sync
		if err != nil {
			panic(err) // only fails on invalid options, which are constant
		}
		return c
	}

	// Pairing: every agent makes its key and CSR and pairs over HTTPS.
	agents := make([]*simAgent, n)
	for i := range agents {
		agents[i] = &simAgent{f: f, idx: i}
	}
	o.Logf("%d agents: pairing (%d at a time)", n, o.PairWorkers)
	var pairLat recorder
	pairLat.start()
	cpu0 := selfCPU()
	t0 := time.Now()
	pairErrs, pairFirst := forEach(ctx, agents, o.PairWorkers, func(a *simAgent) error {
		t := time.Now()
		err := a.pair(ctx)
		pairLat.add(time.Since(t))
		return err
	})
	pairTime := time.Since(t0)
	pairCPU := selfCPU() - cpu0
	pl := Summarize(pairLat.stop())
	o.Logf("%d agents: paired in %.1f s (p99 %.0f ms), %d errors %s", n, pairTime.Seconds(), ms(pl.P99), pairErrs, pairFirst)
	if ctx.Err() != nil {
		return run, ctx.Err()
	}
	paired := agents[:0:0]
	for _, a := range agents {
		if a.tlsConf != nil {
			paired = append(paired, a)
		}
	}

	// Connect and initial sync.
	o.Logf("%d agents: connecting and syncing (%d at a time)", n, o.ConnectWorkers)
	actx, stopAgents := context.WithCancel(ctx)
	var running sync.WaitGroup
	defer func() {
		stopAgents()
		running.Wait()
	}()
	var syncLat recorder
	syncLat.start()
	t0 = time.Now()
	connErrs, connFirst := forEach(ctx, paired, o.ConnectWorkers, func(a *simAgent) error {
		t := time.Now()
		src := net.IPv4(127, 0, 0, byte(1+a.idx%o.SourceIPs))
		if err := a.connect(actx, src); err != nil {
			return err
		}
		if err := a.initialSync(actx); err != nil {
			a.conn.Close()
			return err
		}
		syncLat.add(time.Since(t))
		running.Add(1)
		go func() {
			defer running.Done()
			a.run(actx)
		}()
		return nil
	})
	syncTime := time.Since(t0)
	sl := Summarize(syncLat.stop())
	o.Logf("%d agents: %d synced in %.1f s, %d errors %s", n, f.synced.Load(), syncTime.Seconds(), connErrs, connFirst)
	if ctx.Err() != nil {
		return run, ctx.Err()
	}

	// The server moves each synced server to READY_FOR_TEST within its
	// poll; wait for that before the window opens.
	ready, readyErrors := 0, 0
	readyBy := time.Now().Add(2 * time.Minute)
	for {
		var cerr error
		ready, cerr = countServers(ctx, admin, url.Values{"lifecycle_state": {string(ferry.LifecycleReadyForTest)}})
		if cerr != nil {
			// A server too busy to answer is a figure of the run, not
			// the end of it.
			readyErrors++
			o.Logf("%d agents: count ready servers: %v", n, cerr)
		}
		if (cerr == nil && int64(ready) >= f.synced.Load()) || time.Now().After(readyBy) || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Second)
	}
	o.Logf("%d agents: %d servers READY_FOR_TEST; warming up %v", n, ready, o.Warmup)
	if !sleepCtx(ctx, o.Warmup) {
		return run, ctx.Err()
	}

	// The steady window.
	o.Logf("%d agents: measuring for %v", n, o.Steady)
	writes0, waits0 := f.writes.Load(), f.creditWaits.Load()
	f.acks.start()
	cpuS0, _ := procCPU(srv.pid())
	cpuB0 := selfCPU()
	wr0, wrErr := scrape(ctx, srv.APIURL, srv.Token, pin, writerMetrics...)
	if wrErr != nil {
		o.Logf("%d agents: metadata writer figures: %v", n, wrErr)
	}
	w0 := time.Now()
	lists := listLoop(ctx, admin, o.ListInterval, n, w0.Add(o.Steady))
	sleepCtx(ctx, time.Until(w0.Add(o.Steady)))
	acks := Summarize(f.acks.stop())
	w1 := time.Now()
	cpuS1, _ := procCPU(srv.pid())
	cpuB1 := selfCPU()
	lr := <-lists
	if ctx.Err() != nil {
		return run, ctx.Err()
	}
	window := w1.Sub(w0)
	writes := f.writes.Load() - writes0
	rssMean, rssPeakWindow := srv.rssBetween(w0, w1)
	st, _ := readStatus(srv.pid())
	fds := openFDs(srv.pid())
	sessions, err := scrapeGauge(ctx, srv.APIURL, srv.Token, pin, "ferry_agent_connections")
	if err != nil {
		o.Logf("%d agents: %v", n, err)
	}
	wr1, err := scrape(ctx, srv.APIURL, srv.Token, pin, writerMetrics...)
	if err != nil {
		o.Logf("%d agents: metadata writer figures: %v", n, err)
	}
	continuous, _ := countServers(ctx, admin, url.Values{"replication_state": {string(ferry.ReplicationContinuous)}})
	connectedNow := f.connected.Load()
	logUpTo := srv.logSize()
	stopAgents()
	running.Wait()
	stopSampling()
	alive := srv.alive()
	srv.stop()
	warns, errs, firstWarns := srv.logCounts(logUpTo)

	add("agents connected at the end", float64(connectedNow), "agents")
	add("server sessions (ferry_agent_connections)", sessions, "agents")
	add("servers READY_FOR_TEST before the window", float64(ready), "servers")
	add("servers CONTINUOUS at the end", float64(continuous), "servers")
	add("pairing time", pairTime.Seconds(), "s")
	add("pairing rate", float64(len(paired))/pairTime.Seconds(), "agents/s")
	add("pairing p50", ms(pl.P50), "ms")
	add("pairing p99", ms(pl.P99), "ms")
	add("simulator CPU while pairing (keys, CSRs, TLS)", pairCPU.Seconds(), "s")
	add("connect + initial sync time", syncTime.Seconds(), "s")
	add("connect + initial sync p99", ms(sl.P99), "ms")
	add("server RSS peak (VmHWM)", mib(st.hwm), "MiB")
	add("server RSS steady (mean in window)", mib(rssMean), "MiB")
	add("server RSS peak in window", mib(rssPeakWindow), "MiB")
	add("server RSS per agent (steady)", float64(rssMean)/1024/float64(max(n, 1)), "KiB")
	add("server CPU in window", 100*(cpuS1-cpuS0).Seconds()/window.Seconds(), "% of a core")
	add("simulator CPU in window", 100*(cpuB1-cpuB0).Seconds()/window.Seconds(), "% of a core")
	add("server threads", float64(st.threads), "threads")
	add("server open files", float64(fds), "fds")
	add("writes in window", float64(writes), "writes")
	add("write rate in window", float64(writes)/window.Seconds(), "writes/s")
	add("acks in window", float64(acks.Count), "acks")
	add("ack p50", ms(acks.P50), "ms")
	add("ack p99", ms(acks.P99), "ms")
	add("ack max", ms(acks.Max), "ms")
	if wrErr == nil && err == nil {
		commits, writes := wr1[0]-wr0[0], wr1[1]-wr0[1]
		add("metadata writes in window", writes, "writes")
		add("metadata writes per commit (mean)", writes/max(commits, 1), "writes")
		add("metadata commit time (mean)", 1000*(wr1[2]-wr0[2])/max(commits, 1), "ms")
		add("metadata writer busy", 100*(wr1[3]-wr0[3])/window.Seconds(), "% of the window")
		add("metadata write queue at the end", wr1[4], "writes")
	}
	add("servers list by state p50", ms(lr.state.P50), "ms")
	add("servers list by state p99", ms(lr.state.P99), "ms")
	add("servers list by name p50", ms(lr.name.P50), "ms")
	add("servers list by name p99", ms(lr.name.P99), "ms")
	add("servers list calls", float64(lr.state.Count+lr.name.Count), "calls")
	add("pairing errors", float64(pairErrs), "errors")
	add("connect/sync errors", float64(connErrs), "errors")
	add("session errors", float64(f.sessionErrs.Load()), "errors")
	add("servers list errors", float64(lr.errs), "errors")
	add("ready count errors (before the window)", float64(readyErrors), "errors")
	add("writes held back (credit or pause)", float64(f.creditWaits.Load()-waits0), "writes")
	add("server log warnings and errors", float64(warns+errs), "lines")
	for _, e := range []string{pairFirst, connFirst, lr.firstErr} {
		if e != "" {
			o.Logf("%d agents: first error: %s", n, e)
		}
	}
	f.errMu.Lock()
	for _, e := range f.firstErrs {
		o.Logf("%d agents: session error: %s", n, e)
	}
	f.errMu.Unlock()
	for _, m := range firstWarns {
		o.Logf("%d agents: server log: %s", n, m)
	}
	if !alive {
		return run, fmt.Errorf("the server exited during the run: %s", srv.logTail())
	}
	return run, nil
}

// makeImage returns the shared start of every virtual disk: half random
// (binaries), half text (configuration, logs), as a small OS image.
func makeImage(n int) []byte {
	b := make([]byte, n)
	rand.Read(b[:n/2])
	const text = "Ferry scale bench: a line of text as in a configuration file or a log.\n"
	for i := n / 2; i < n; i += len(text) {
		copy(b[i:], text)
	}
	return b
}

// forEach calls fn for every agent, workers at a time, and returns the
// number of failures and the first failure's text.
func forEach(ctx context.Context, agents []*simAgent, workers int, fn func(*simAgent) error) (int, string) {
	var (
		next  atomic.Int64
		fails atomic.Int64
		mu    sync.Mutex
		first string
		wg    sync.WaitGroup
	)
	for range min(workers, len(agents)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(agents) {
					return
				}
				if err := fn(agents[i]); err != nil {
					fails.Add(1)
					mu.Lock()
					if first == "" {
						first = fmt.Sprintf("agent %d: %v", i, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return int(fails.Load()), first
}

// listResult is the filtered list calls of a window.
type listResult struct {
	state, name Summary
	errs        int
	firstErr    string
}

// listLoop calls the control plane's server list with filters, as an
// operator's dashboard does, every interval until end: by lifecycle and
// replication state (a full page), and by a host name (one match, a scan
// of the text index).
func listLoop(ctx context.Context, c *api.Client, every time.Duration, n int, end time.Time) <-chan listResult {
	out := make(chan listResult, 1)
	go func() {
		var state, name []time.Duration
		var r listResult
		for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
			q := url.Values{"lifecycle_state": {string(ferry.LifecycleReadyForTest)}, "replication_state": {string(ferry.ReplicationContinuous)}, "tag": {"bench=scale"}}
			byName := i%2 == 1
			if byName {
				q = url.Values{"text": {fmt.Sprintf("sim-%05d", (i*7919)%n)}}
			}
			t := time.Now()
			l, err := c.ListServers(ctx, q)
			d := time.Since(t)
			switch {
			case err != nil:
				r.errs++
				if r.firstErr == "" {
					r.firstErr = "servers list: " + err.Error()
				}
			case byName:
				name = append(name, d)
				if len(l.Items) != 1 {
					r.errs++
					if r.firstErr == "" {
						r.firstErr = fmt.Sprintf("servers list by name %s: %d matches, want 1", q.Get("text"), len(l.Items))
					}
				}
			default:
				state = append(state, d)
			}
			sleepCtx(ctx, every)
		}
		r.state, r.name = Summarize(state), Summarize(name)
		out <- r
	}()
	return out
}

// countServers counts the servers a filter matches, page by page.
func countServers(ctx context.Context, c *api.Client, q url.Values) (int, error) {
	q.Set("limit", strconv.Itoa(ferry.MaxPageSize))
	all, err := c.AllServers(ctx, q)
	return len(all), err
}

// scrapeGauge reads one unlabelled gauge from the server's /metrics.
func scrapeGauge(ctx context.Context, base, token string, pin []byte, name string) (float64, error) {
	v, err := scrape(ctx, base, token, pin, name)
	if err != nil {
		return 0, err
	}
	return v[0], nil
}

// scrape reads unlabelled metrics from the server's /metrics, in the
// order of names.
func scrape(ctx context.Context, base, token string, pin []byte, names ...string) ([]float64, error) {
	tr := &http.Transport{TLSClientConfig: pki.ClientTLSConfig(pin, nil)}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: tr, Timeout: time.Minute}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape /metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape /metrics: status %d: %v", resp.StatusCode, err)
	}
	out := make([]float64, len(names))
	for i, name := range names {
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				if out[i], err = strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil {
					return nil, fmt.Errorf("/metrics: %s: %w", name, err)
				}
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("/metrics has no %s", name)
		}
	}
	return out, nil
}

// writerMetrics are the metadata store writer's counters, scraped at both
// ends of the window.
var writerMetrics = []string{"ferry_metadata_commits_total", "ferry_metadata_writes_total",
	"ferry_metadata_commit_seconds_total", "ferry_metadata_busy_seconds_total", "ferry_metadata_write_queue"}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// printRun prints one agent count's table.
func printRun(w io.Writer, o Options, r Measurement) {
	fmt.Fprintf(w, "\nScale: %d simulated agents (virtual %d MiB disks, %d KiB of data each, %.1f KiB/s of %d–%d KiB writes (%s) after the sync), one ferry server, %v window\n",
		r.Agents, o.DiskBytes>>20, o.DataBytes>>10, float64(o.WriteBytesPerSec)/1024, o.MinWrite>>10, o.MaxWrite>>10, o.Pattern, o.Steady)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, f := range r.Figures {
		fmt.Fprintf(tw, "%s\t %s\t %s\t\n", f.Name, formatValue(f.Value), f.Unit)
	}
	tw.Flush()
}

func formatValue(v float64) string {
	switch {
	case v == float64(int64(v)) && v < 1e9:
		return strconv.FormatInt(int64(v), 10)
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	d, _ := procCPU(os.Getpid())
	return d
}
