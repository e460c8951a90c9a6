package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/pki"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-faults-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "ferry")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/ferry").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build ferry: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Sizes of the lab.
const (
	sourceSize   = 64 << 20 // the source disk
	prefillSize  = 48 << 20 // random data on it before the initial sync
	storeFSSize  = 3 << 30  // the staging file system (sparse)
	growStep     = 1 << 20  // the grow fault adds this much
	fioRegion    = 16 << 20 // each round's fio writes fall in one region
	blockSize    = 4096
	syncThrottle = 6 << 20 // bytes/s during the initial sync, so faults land in it
)

// cluster is the lab: a server on the host, an agent in a namespace, a
// Toxiproxy in between on the data plane.
type cluster struct {
	t                   *testing.T
	dir, data, state    string
	devFile, dev        string
	storeMnt            string
	lab                 *netLab
	tp                  *toxiproxy
	apiAddr, dpAddr     string
	token, fingerprint  string
	installToken        string
	server, agent       *proc
	serverLog, agentLog *logBuffer
	client              *api.Client
	id, disk            string
	size                atomic.Int64 // the source's size; the disk lane grows it
	stats               *stats
	rng                 *rand.Rand    // the test goroutine's (rand.Rand is not safe for concurrent use)
	gcTime              time.Duration // how long the last whole store gc took
	launching           atomic.Bool   // a test launch job is running
}

func (c *cluster) startServer() error {
	p, err := startProc("server", c.serverLog, bin, "server", "--dev", "--data", c.data,
		"--listen", c.apiAddr, "--data-listen", c.dpAddr, "--advertise", c.lab.hostIP)
	if err != nil {
		return err
	}
	c.server = p
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c.token == "" {
			out := c.serverLog.String()
			c.token = regexp.MustCompile(`fyt_[a-z0-9_]+`).FindString(out)
			if m := regexp.MustCompile(`(?m)^\s+([0-9a-f]{64})\s*$`).FindStringSubmatch(out); m != nil {
				c.fingerprint = m[1]
			}
		}
		if c.token != "" && c.fingerprint != "" {
			if c.client == nil {
				pin, err := pki.ParseFingerprint(c.fingerprint)
				if err != nil {
					return err
				}
				if c.client, err = api.NewClient("https://"+c.apiAddr, c.token, pki.ClientTLSConfig(pin, nil)); err != nil {
					return err
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := c.client.Health(ctx)
			cancel()
			if err == nil {
				return nil
			}
		}
		if !p.running() {
			return fmt.Errorf("server exited at start: %v", p.err)
		}
		if time.Now().After(deadline) {
			return errors.New("server did not answer within 60 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *cluster) startAgent() error {
	args := []string{bin, "agent", "--state-dir", c.state, "--disk", c.dev, "--tracker", "ebpf"}
	if c.installToken != "" {
		args = append(args, "--server", "https://"+c.apiAddr, "--install-token", c.installToken,
			"--ca-fingerprint", c.fingerprint, "--machine-id", "ferry-faults")
		c.installToken = ""
	}
	p, err := startProc("agent", c.agentLog, c.lab.argv(args...)...)
	if err != nil {
		return err
	}
	c.agent = p
	return nil
}

// serverState is the only server's record, or nil while the API is down.
func (c *cluster) serverState() *ferry.SourceServer {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	l, err := c.client.ListServers(ctx, nil)
	if err != nil || len(l.Items) != 1 {
		return nil
	}
	return &l.Items[0]
}

func (c *cluster) phase() string {
	if s := c.serverState(); s != nil {
		return string(s.Replication.State)
	}
	return "UNKNOWN"
}

func (c *cluster) throttle(bps int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.client.Server(ctx, c.id)
	if err != nil {
		return err
	}
	rs := s.ReplicationSetup
	rs.BandwidthBytesPerSec = bps
	return c.client.Do(ctx, "PATCH", "/servers/"+url.PathEscape(c.id), nil, api.UpdateServerRequest{Replication: &rs}, nil)
}

// setLaunch makes the test launches small: the source holds no system,
// QEMU only has to start from the replica (and is stopped at terminate).
func (c *cluster) setLaunch() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.client.Server(ctx, c.id)
	if err != nil {
		return err
	}
	ls := s.LaunchSetup
	ls.RightSizing, ls.CPUs, ls.MemoryMiB, ls.Convert, ls.PostLaunchActions = ferry.RightSizingNone, 1, 64, false, nil
	return c.client.Do(ctx, "PATCH", "/servers/"+url.PathEscape(c.id), nil, api.UpdateServerRequest{Launch: &ls}, nil)
}

// drain takes a drained snapshot, retrying while the agent reconnects.
func (c *cluster) drain(within time.Duration) (string, error) {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
		var taken api.TakenSnapshots
		err := c.client.Do(ctx, "POST", "/servers/"+url.PathEscape(c.id)+"/snapshots", nil,
			api.TakeSnapshotRequest{Drain: true, TimeoutSeconds: 60}, &taken)
		cancel()
		if err == nil && taken.Snapshots[c.disk] != "" {
			return taken.Snapshots[c.disk], nil
		}
		last = err
		time.Sleep(time.Second)
	}
	return "", fmt.Errorf("no drained snapshot within %s: %v", within, last)
}

// fio writes random blocks into one random region of the source for d.
func (c *cluster) fio(d time.Duration, rng *rand.Rand) *exec.Cmd {
	regions := c.size.Load() / fioRegion
	off := rng.Int64N(regions) * fioRegion
	cmd := exec.Command("fio", "--name=faults", "--filename="+c.dev, "--rw=randwrite", "--bsrange=4k-64k",
		"--ioengine=psync", "--direct=1", "--time_based", "--runtime="+strconv.Itoa(int(d.Seconds())),
		"--rate=4m", "--offset="+strconv.FormatInt(off, 10), "--size="+strconv.Itoa(fioRegion),
		"--randrepeat=0", "--output-format=terse")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	return cmd
}

// check stops the server, collects garbage, exports the snapshot, compares
// it block by block with the source, verifies the store and restarts the
// server. It returns the bytes that differ.
func (c *cluster) check(snap string) (int64, error) {
	if err := c.server.stop(30 * time.Second); err != nil {
		return 0, err
	}
	defer func() {
		if err := c.startServer(); err != nil {
			c.t.Errorf("restart server after check: %v", err)
		}
	}()
	// Garbage collection killed at random moments first: a later one
	// must still leave a sound store with no garbage.
	for kills, tries := 0, 0; kills < 3 && tries < 10; tries++ {
		log := &logBuffer{}
		gc, err := startProc("gc", log, bin, "store", "gc", "--data", c.data)
		if err != nil {
			return 0, err
		}
		time.Sleep(c.gcTime/10 + time.Duration(c.rng.Int64N(int64(c.gcTime*8/10)+1)))
		if gc.running() {
			gc.kill()
			c.stats.inject("gc-kill9", "GC")
			kills++
		} else if <-gc.done; gc.err != nil {
			return 0, fmt.Errorf("store gc: %v\n%s", gc.err, log)
		} else {
			c.gcTime = c.gcTime * 2 / 3 // finished first: aim earlier
		}
	}
	began := time.Now()
	if out, err := exec.Command(bin, "store", "gc", "--data", c.data).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("store gc: %v\n%s", err, out)
	}
	c.gcTime = time.Since(began)
	img := filepath.Join(c.dir, "replica.raw")
	defer os.Remove(img)
	if out, err := exec.Command(bin, "snapshots", "export", "--data", c.data, "--disk", c.id+"."+c.disk,
		"--snapshot", snap, "--format", "raw", "--output-file", img).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("export: %v\n%s", err, out)
	}
	lost, err := compare(c.dev, img)
	if err != nil {
		return 0, err
	}
	out, err := exec.Command(bin, "store", "verify", "--data", c.data).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("No problems")) {
		return lost, fmt.Errorf("store verify: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("\n0 chunks are referenced by nothing")) {
		return lost, fmt.Errorf("orphaned chunks after garbage collection:\n%s", out)
	}
	return lost, nil
}

// compare counts the bytes of the 4 KiB blocks where a and b differ, and
// the length difference.
func compare(a, b string) (int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	var lost, pos int64
	var where []string
	defer func() {
		if len(where) > 0 {
			fmt.Fprintf(os.Stderr, "compare %s %s: differing 4 KiB blocks at %s\n", a, b, strings.Join(where, " "))
		}
	}()
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		n := min(na, nb)
		for i := 0; i < n; i += blockSize {
			if !bytes.Equal(ba[i:min(i+blockSize, n)], bb[i:min(i+blockSize, n)]) {
				lost += int64(min(blockSize, n-i))
				if len(where) < 16 {
					where = append(where, fmt.Sprintf("%d", pos+int64(i)))
				}
			}
		}
		pos += int64(n)
		lost += int64(max(na, nb) - n)
		if ea != nil || eb != nil {
			if ea != nil && ea != io.EOF && ea != io.ErrUnexpectedEOF {
				return lost, ea
			}
			if eb != nil && eb != io.EOF && eb != io.ErrUnexpectedEOF {
				return lost, eb
			}
			if ea == nil || eb == nil { // one is longer
				rest, _ := io.Copy(io.Discard, map[bool]*os.File{true: fa, false: fb}[ea == nil])
				lost += rest
			}
			return lost, nil
		}
	}
}

// fault is one kind of fault: inject it, hold it, heal it. Faults of
// different lanes run at the same time (a server killed while the link is
// down and the staging disk is full); a lane runs one fault at a time.
type fault struct {
	kind string
	lane string
	do   func(c *cluster, rng *rand.Rand) error
}

// lanes are the groups of faults that can overlap: processes; the
// namespace's link state, its nftables packet loss and its tc shaping;
// the Toxiproxy toxics on the data plane (one at a time: Toxiproxy's API
// can hang for seconds when a toxic is added while a timeout toxic
// stalls the links); and disks.
var lanes = []string{"proc", "link", "loss", "shape", "proxy", "disk"}

func sleepRand(rng *rand.Rand, lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(rng.Int64N(int64(hi-lo)+1)))
}

var faultKinds = []fault{
	{"agent-kill9", "proc", func(c *cluster, rng *rand.Rand) error {
		c.agent.kill()
		sleepRand(rng, 0, time.Second)
		return c.startAgent()
	}},
	{"server-kill9", "proc", func(c *cluster, rng *rand.Rand) error {
		c.server.kill()
		sleepRand(rng, 0, time.Second)
		return c.startServer()
	}},
	{"server-kill9-in-snapshot", "proc", func(c *cluster, rng *rand.Rand) error {
		done := make(chan struct{})
		drain := rng.IntN(2) == 0 // drawn here: rng is not safe for concurrent use
		go func() {
			defer close(done)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = c.client.Do(ctx, "POST", "/servers/"+url.PathEscape(c.id)+"/snapshots", nil,
				api.TakeSnapshotRequest{Drain: drain, TimeoutSeconds: 20}, nil)
		}()
		sleepRand(rng, 0, 700*time.Millisecond)
		c.server.kill()
		<-done
		return c.startServer()
	}},
	{"link-cut", "link", func(c *cluster, rng *rand.Rand) error {
		if err := c.lab.link(false); err != nil {
			return err
		}
		sleepRand(rng, 500*time.Millisecond, 2*time.Second)
		return c.lab.link(true)
	}},
	{"link-flap", "link", func(c *cluster, rng *rand.Rand) error {
		for i := 0; i < 2+rng.IntN(3); i++ {
			if err := c.lab.link(false); err != nil {
				return err
			}
			sleepRand(rng, 200*time.Millisecond, 800*time.Millisecond)
			if err := c.lab.link(true); err != nil {
				return err
			}
			sleepRand(rng, 200*time.Millisecond, 800*time.Millisecond)
		}
		return nil
	}},
	{"loss30", "loss", func(c *cluster, rng *rand.Rand) error {
		if err := c.lab.loss(30); err != nil {
			return err
		}
		sleepRand(rng, time.Second, 3*time.Second)
		return c.lab.loss(0)
	}},
	{"latency500", "proxy", func(c *cluster, rng *rand.Rand) error {
		if err := c.tp.toxic("lat", "latency", map[string]any{"latency": 500, "jitter": 50}); err != nil {
			return err
		}
		sleepRand(rng, 500*time.Millisecond, 1500*time.Millisecond)
		return c.tp.untoxic("lat")
	}},
	{"reset", "proxy", func(c *cluster, rng *rand.Rand) error {
		if err := c.tp.toxic("rst", "reset_peer", map[string]any{"timeout": rng.IntN(500)}); err != nil {
			return err
		}
		sleepRand(rng, 300*time.Millisecond, time.Second)
		return c.tp.untoxic("rst")
	}},
	{"stall", "proxy", func(c *cluster, rng *rand.Rand) error {
		ms := 500 + rng.IntN(1000)
		if err := c.tp.toxic("stall", "timeout", map[string]any{"timeout": ms}); err != nil {
			return err
		}
		time.Sleep(time.Duration(ms)*time.Millisecond + 300*time.Millisecond)
		return c.tp.untoxic("stall")
	}},
	{"slow-link", "shape", func(c *cluster, rng *rand.Rand) error {
		if err := c.lab.slow("2mbit"); err != nil {
			return err
		}
		sleepRand(rng, time.Second, 3*time.Second)
		return c.lab.slow("")
	}},
	{"staging-disk-full", "disk", func(c *cluster, rng *rand.Rand) error {
		var st syscall.Statfs_t
		if err := syscall.Statfs(c.storeMnt, &st); err != nil {
			return err
		}
		filler := filepath.Join(c.storeMnt, "filler")
		free := int64(st.Bavail)*st.Bsize - 256<<10
		if err := sh("fallocate", "-l", strconv.FormatInt(free, 10), filler); err != nil {
			return err
		}
		sleepRand(rng, time.Second, 3*time.Second)
		return os.Remove(filler)
	}},
	{"source-grown", "disk", func(c *cluster, rng *rand.Rand) error {
		// The agent notices within its size poll, and at the latest when
		// it answers the next FLUSH: the round's drained snapshot must
		// have the new size (compare counts a shorter replica as lost).
		newSize := c.size.Load() + growStep
		if err := os.Truncate(c.devFile, newSize); err != nil {
			return err
		}
		if err := sh("losetup", "-c", c.dev); err != nil {
			return err
		}
		c.size.Store(newSize)
		sleepRand(rng, 500*time.Millisecond, 1500*time.Millisecond)
		return nil
	}},
}

// target is how many faults of every kind a run injects and the time it
// may take: 50 within 15 minutes by default (FERRY_FAULTS_PER_KIND,
// FERRY_FAULTS_DURATION), or an hour of rounds with FERRY_SOAK=1.
func target(t *testing.T) (int, time.Duration) {
	want, limit := 50, 15*time.Minute
	if os.Getenv("FERRY_SOAK") == "1" {
		want, limit = math.MaxInt, time.Hour
	}
	if v := os.Getenv("FERRY_FAULTS_PER_KIND"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("FERRY_FAULTS_PER_KIND=%q: want a positive number", v)
		}
		want = n
	}
	if v := os.Getenv("FERRY_FAULTS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("FERRY_FAULTS_DURATION: %v", err)
		}
		limit = d
	}
	return want, limit
}

// TestFaultInjection replicates a loop device under fio writes while
// injecting faults at random moments, and after every round checks that
// the replica at a drained barrier equals the source byte for byte, that
// the store verifies clean after garbage collection, and at the end that
// nothing leaked.
func TestFaultInjection(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault-injection suite takes minutes; not in -short")
	}
	if os.Geteuid() != 0 {
		skip(t, "network namespaces, loop devices and eBPF need root")
	}
	for _, tool := range []string{"fio", "nft", "tc", "ip", "nsenter", "losetup", "mkfs.ext4", "fallocate", "mount", "qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			skip(t, tool+" is not installed (scripts/setup.sh installs it)")
		}
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("FERRY_FAULTS_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	t.Logf("seed %d (FERRY_FAULTS_SEED to repeat)", seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	dir, err := os.MkdirTemp("", "ferry-faults-")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: dir, state: filepath.Join(dir, "agent"), serverLog: &logBuffer{}, agentLog: &logBuffer{},
		stats: newStats(), rng: rng, gcTime: 100 * time.Millisecond}
	c.size.Store(sourceSize)
	toxLog := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			tail := func(s string) string { return s[max(0, len(s)-20000):] }
			t.Logf("server log (tail):\n%s", tail(c.serverLog.String()))
			t.Logf("agent log (tail):\n%s", tail(c.agentLog.String()))
		}
	})
	teardown := c.setup(t, rng, toxLog)

	// Round 0: the initial sync, throttled so that faults land in it.
	if err := c.startAgent(); err != nil {
		t.Fatal(err)
	}
	if s := c.waitServer(30*time.Second, func(s *ferry.SourceServer) bool { return len(s.Disks) == 1 }); s != nil {
		c.id, c.disk = s.ID, s.Disks[0].Name
	} else {
		t.Fatal("the agent never paired")
	}
	if err := c.throttle(syncThrottle); err != nil {
		t.Fatal(err)
	}
	if err := c.setLaunch(); err != nil {
		t.Fatal(err)
	}
	if c.waitServer(30*time.Second, func(s *ferry.SourceServer) bool { return s.Replication.State == ferry.ReplicationInitialSync }) == nil {
		t.Fatal("the initial sync never started")
	}

	stats := c.stats
	want, limit := target(t)
	t.Logf("injecting until every kind has %d faults (at most %s)", want, limit)
	began := time.Now()
	for round := 0; ; round++ {
		if round > 0 && (stats.least() >= want || time.Since(began) > limit) {
			break
		}
		fio := c.fio(roundTime, rng)
		if err := fio.Start(); err != nil {
			t.Fatal(err)
		}
		// Every lane injects its faults, one after another, until the
		// writes end: faults of different lanes overlap.
		end := time.Now().Add(roundTime - 500*time.Millisecond)
		errs := make(chan error, len(lanes)+1)
		wait := time.Duration(rng.Int64N(int64(roundTime / 2)))
		go func() { errs <- c.launchLane(end, wait) }()
		for li, lane := range lanes {
			lrng := rand.New(rand.NewPCG(rng.Uint64(), uint64(li)))
			go func() {
				for time.Now().Before(end) {
					f := stats.next(lane, lrng)
					sleepRand(lrng, 0, 300*time.Millisecond)
					phase := c.phase()
					if c.launching.Load() {
						stats.inject("during-launch", "")
					}
					if err := f.do(c, lrng); err != nil {
						errs <- fmt.Errorf("fault %s: %w", f.kind, err)
						return
					}
					stats.inject(f.kind, phase)
				}
				errs <- nil
			}()
		}
		for range len(lanes) + 1 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		lanesTook := time.Since(end) + roundTime - 500*time.Millisecond
		if err := fio.Wait(); err != nil {
			t.Fatalf("round %d: fio: %v", round, err)
		}
		if round == 0 {
			if err := c.retry(func() error { return c.throttle(0) }); err != nil {
				t.Fatal(err)
			}
		}
		healed := time.Now()
		snap, err := c.drain(3 * time.Minute)
		if err != nil {
			t.Fatalf("round %d: did not converge: %v", round, err)
		}
		conv := time.Since(healed)
		stats.converged(conv)
		checked := time.Now()
		lost, err := c.check(snap)
		stats.addLost(lost)
		if lost != 0 {
			t.Errorf("round %d: snapshot %s differs from the source in %d bytes", round, snap, lost)
		}
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if t.Failed() {
			break
		}
		t.Logf("round %d: faults for %.1fs; converged in %.1fs; snapshot %s equals the source (%d MiB); checked in %.1fs; %s",
			round, lanesTook.Seconds(), conv.Seconds(), snap, c.size.Load()>>20, time.Since(checked).Seconds(), stats.counts())
		// The next round starts once the agent is back in session.
		if c.waitServer(90*time.Second, func(s *ferry.SourceServer) bool { return s.Replication.State == ferry.ReplicationContinuous }) == nil {
			t.Fatalf("round %d: the agent did not return to CONTINUOUS after the check", round)
		}
	}
	teardown()
	line := stats.summary()
	t.Log(line)
	fmt.Println(line)
	// go test ./... shows nothing of a passing package; make test prints
	// this file after the run so that CI's log shows the figures.
	if f := os.Getenv("FERRY_FAULTS_SUMMARY"); f != "" {
		if err := os.WriteFile(f, []byte(line+"\n"), 0o644); err != nil {
			t.Errorf("write the summary: %v", err)
		}
	}
	if stats.lost != 0 {
		t.Errorf("bytes lost: %d", stats.lost)
	}
	if n := stats.least(); n < want {
		t.Errorf("only %d faults of some kind within %s, want %d of every kind: %s", n, limit, want, stats.counts())
	}
}

// roundTime is how long fio writes in a round while the lanes inject.
const roundTime = 12 * time.Second

func (c *cluster) retry(f func() error) error {
	var err error
	for range 60 {
		if err = f(); err == nil {
			return nil
		}
		time.Sleep(time.Second)
	}
	return err
}

func (c *cluster) waitServer(within time.Duration, cond func(*ferry.SourceServer) bool) *ferry.SourceServer {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if s := c.serverState(); s != nil && cond(s) {
			return s
		}
		time.Sleep(250 * time.Millisecond)
	}
	return nil
}

// setup builds the lab and starts the server; the returned teardown stops
// everything and checks that nothing leaked.
func (c *cluster) setup(t *testing.T, rng *rand.Rand, toxLog *logBuffer) (teardown func()) {
	t.Helper()
	c.lab = newNetLab(t)

	// The source: a loop device with random data.
	c.devFile = filepath.Join(c.dir, "source.img")
	c.dev = loopFile(t, c.devFile, sourceSize)
	mustSh(t, "dd", "if=/dev/urandom", "of="+c.dev, "bs=1M", "count="+strconv.Itoa(prefillSize>>20), "oflag=direct", "status=none")

	// The staging disk: a small ext4 so it can be filled.
	storeImg := filepath.Join(c.dir, "staging.img")
	storeDev := loopFile(t, storeImg, storeFSSize)
	mustSh(t, "mkfs.ext4", "-q", "-F", "-m", "0", storeDev)
	c.storeMnt = filepath.Join(c.dir, "staging")
	if err := os.MkdirAll(c.storeMnt, 0o700); err != nil {
		t.Fatal(err)
	}
	mustSh(t, "mount", storeDev, c.storeMnt)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			_ = sh("umount", "-l", c.storeMnt)
		}
	})
	c.data = filepath.Join(c.storeMnt, "server")

	// The server: API on the veth, data plane on loopback behind
	// Toxiproxy, which listens on the veth at the same port.
	c.apiAddr = freePort(t, c.lab.hostIP)
	c.dpAddr = freePort(t, "127.0.0.1")
	_, dpPort, _ := net.SplitHostPort(c.dpAddr)
	c.tp = startToxiproxy(t, net.JoinHostPort(c.lab.hostIP, dpPort), c.dpAddr, toxLog)
	if err := c.startServer(); err != nil {
		t.Fatalf("%v\n%s", err, c.serverLog)
	}
	t.Cleanup(func() {
		if c.agent != nil && c.agent.running() {
			c.agent.kill()
		}
		if c.server != nil && c.server.running() {
			c.server.kill()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	it, err := c.client.CreateInstallToken(ctx, &api.CreateInstallTokenRequest{Name: "faults", ExpiresInSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	c.installToken = it.Secret

	return func() {
		if err := c.agent.stop(20 * time.Second); err != nil {
			t.Error(err)
		}
		if err := c.server.stop(30 * time.Second); err != nil {
			t.Error(err)
		}
		c.tp.p.kill()
		if err := sh("umount", c.storeMnt); err != nil {
			t.Errorf("staging file system still busy: %v", err)
		} else {
			mounted = false
		}
		for _, d := range []string{storeDev, c.dev} {
			if err := sh("losetup", "-d", d); err != nil {
				t.Errorf("detach %s: %v", d, err)
			}
		}
		_ = sh("ip", "link", "del", c.lab.hostIf)
		if err := sh("ip", "netns", "del", c.lab.ns); err != nil {
			t.Errorf("delete namespace: %v", err)
		}
		c.checkLeaks(t)
		os.RemoveAll(c.dir)
	}
}

// checkLeaks fails the test if a process, loop device, mount or namespace
// of the lab outlived it.
func (c *cluster) checkLeaks(t *testing.T) {
	t.Helper()
	time.Sleep(200 * time.Millisecond)
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// A KVM probe whose server died is orphaned (parent 1); one of a
		// live process elsewhere is not a leak of this lab.
		orphanProbe := false
		if bytes.Contains(b, []byte("ferry-kvm-probe-")) {
			st, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
			if f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:])); len(f) > 1 && f[1] == "1" {
				orphanProbe = true
			}
		}
		if bytes.Contains(b, []byte(c.dir)) || orphanProbe {
			t.Errorf("leaked process %s: %s", filepath.Dir(p), bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	if out, _ := exec.Command("losetup", "-a").Output(); bytes.Contains(out, []byte(c.dir)) {
		t.Errorf("leaked loop devices:\n%s", out)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(b, []byte(c.dir)) {
		t.Errorf("leaked mount under %s", c.dir)
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); bytes.Contains(out, []byte(c.lab.ns)) {
		t.Errorf("leaked namespace %s", c.lab.ns)
	}
}

// stats counts faults and convergence times; the lanes share it.
type stats struct {
	mu              sync.Mutex
	byKind, byPhase map[string]int
	launches        map[ferry.LaunchStatus]int // test launches by outcome
	duringLaunch    int                        // faults injected while a launch job ran
	launchFailures  []string                   // the last log line of each launch that did not run
	conv            []time.Duration
	lost            int64
}

func newStats() *stats {
	return &stats{byKind: map[string]int{}, byPhase: map[string]int{}, launches: map[ferry.LaunchStatus]int{}}
}

func (s *stats) launched(st ferry.LaunchStatus, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == "" {
		st = "NOT_ENDED"
	}
	s.launches[st]++
	if st != ferry.LaunchLaunched {
		s.launchFailures = append(s.launchFailures, why)
	}
}

func (s *stats) inject(kind, phase string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if kind == "during-launch" {
		s.duringLaunch++
		return
	}
	s.byKind[kind]++
	s.byPhase[phase]++
}

func (s *stats) converged(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conv = append(s.conv, d)
}

func (s *stats) addLost(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lost += n
}

// next picks the lane's kind injected least so far (ties at random), so
// that every kind reaches the target together.
func (s *stats) next(lane string, rng *rand.Rand) fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pick []fault
	least := math.MaxInt
	for _, f := range faultKinds {
		if f.lane != lane {
			continue
		}
		switch n := s.byKind[f.kind]; {
		case n < least:
			least, pick = n, []fault{f}
		case n == least:
			pick = append(pick, f)
		}
	}
	return pick[rng.IntN(len(pick))]
}

// allKinds are the kinds a run must inject: the lanes' and the check's.
func allKinds() []string {
	kinds := []string{"gc-kill9"}
	for _, f := range faultKinds {
		kinds = append(kinds, f.kind)
	}
	return kinds
}

// least is the count of the kind injected least.
func (s *stats) least() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	least := math.MaxInt
	for _, k := range allKinds() {
		least = min(least, s.byKind[k])
	}
	return least
}

func (s *stats) counts() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var kinds []string
	for _, k := range allKinds() {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, s.byKind[k]))
	}
	for st, n := range s.launches {
		kinds = append(kinds, fmt.Sprintf("launch-%s=%d", st, n))
	}
	return strings.Join(kinds, " ")
}

func (s *stats) summary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := 0
	var kinds, phases []string
	for k, n := range s.byKind {
		total += n
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	for p, n := range s.byPhase {
		phases = append(phases, fmt.Sprintf("%s=%d", p, n))
	}
	sort.Strings(kinds)
	sort.Strings(phases)
	slices.Sort(s.conv)
	pct := func(p float64) float64 {
		if len(s.conv) == 0 {
			return 0
		}
		return s.conv[min(len(s.conv)-1, int(p*float64(len(s.conv))))].Seconds()
	}
	var launches []string
	for _, why := range s.launchFailures {
		launches = append(launches, "("+why+")")
	}
	for st, n := range s.launches {
		launches = append(launches, fmt.Sprintf("%s=%d", st, n))
	}
	sort.Strings(launches)
	return fmt.Sprintf("FAULTS: %d injected in %d rounds [%s] during [%s], %d of them during a test launch; test launches [%s]; convergence p50 %.1fs p99 %.1fs; bytes lost %d",
		total, len(s.conv), strings.Join(kinds, " "), strings.Join(phases, " "), s.duringLaunch, strings.Join(launches, " "), pct(0.5), pct(0.99), s.lost)
}

// launchLane test-launches the replica once, at a random moment of the
// round's first half, and terminates the instance, while the other lanes
// inject their faults: a test launch must end (launched or failed with a
// reason) and its instance must go away whatever happens to the server
// meanwhile. It returns once no instance is left, or an error if one
// cannot be terminated. One launch a round bounds how long the lane
// outlasts the others.
func (c *cluster) launchLane(end time.Time, wait time.Duration) error {
	time.Sleep(wait)
	for time.Now().Before(end) {
		s := c.serverState()
		if s == nil || s.Lifecycle != ferry.LifecycleReadyForTest && s.Lifecycle != ferry.LifecycleTesting {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		var job ferry.Job
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.client.Do(ctx, "POST", "/jobs/start-test", nil, api.StartJobRequest{SourceServerIDs: []string{c.id}}, &job)
		cancel()
		if err != nil {
			time.Sleep(500 * time.Millisecond) // the server may be down or busy: not a launch
			continue
		}
		c.launching.Store(true)
		status, why := c.waitJob(job.ID, 60*time.Second)
		c.stats.launched(status, why)
		c.launching.Store(false)
		break
	}
	return c.terminateAll(90 * time.Second)
}

// waitJob waits for a job to end and returns its server's launch status
// ("" if it did not end in time; the API may be down meanwhile) and the
// last line of its log.
func (c *cluster) waitJob(id string, within time.Duration) (ferry.LaunchStatus, string) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var jl api.JobWithLog
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := c.client.Do(ctx, "GET", "/jobs/"+url.PathEscape(id), nil, nil, &jl)
		cancel()
		if err == nil && jl.Status == ferry.JobCompleted {
			// Why it failed, when it did: the first failure event, else
			// the last line.
			last := ""
			if n := len(jl.Log); n > 0 {
				last = string(jl.Log[n-1].Event) + ": " + jl.Log[n-1].Message
			}
			for _, e := range jl.Log {
				switch e.Event {
				case ferry.EventSnapshotFail, ferry.EventConversionFail, ferry.EventLaunchFailed, ferry.EventPostLaunchFail, ferry.EventCleanupFail:
					last = string(e.Event) + ": " + e.Message
				default:
					continue
				}
				break
			}
			if len(jl.Servers) == 1 {
				return jl.Servers[0].LaunchStatus, last
			}
			return "NO_SERVER", last
		}
		time.Sleep(200 * time.Millisecond)
	}
	return "", "did not end within " + within.String()
}

// terminateAll terminates the server's launched instance until the
// server says none is left.
func (c *cluster) terminateAll(within time.Duration) error {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		s := c.serverState()
		if s == nil {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		if s.Launched == nil || !s.Launched.TerminatedAt.IsZero() {
			return nil
		}
		var job ferry.Job
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		last = c.client.Do(ctx, "POST", "/jobs/terminate", nil, api.StartJobRequest{SourceServerIDs: []string{c.id}}, &job)
		cancel()
		if last == nil {
			_, _ = c.waitJob(job.ID, 30*time.Second)
		} else {
			time.Sleep(time.Second)
		}
	}
	return fmt.Errorf("the test instance was not terminated within %s: %v", within, last)
}
