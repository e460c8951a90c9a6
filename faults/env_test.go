package faults

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// skip skips loudly, or fails when FERRY_TEST_REQUIRE_ALL=1 (CI).
func skip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
		t.Fatalf("required fault-injection suite cannot run: %s", why)
	}
	t.Skipf("SKIPPED (set up what is missing to run it): %s", why)
}

// sh runs a command and returns its combined output in the error.
func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func mustSh(t *testing.T, name string, args ...string) {
	t.Helper()
	if err := sh(name, args...); err != nil {
		t.Fatal(err)
	}
}

// logBuffer is a bytes.Buffer safe for a process writing and a test
// reading at once.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proc is a started child process.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{}
	err  error
}

func startProc(name string, log *logBuffer, argv ...string) (*proc, error) {
	p := &proc{name: name, cmd: exec.Command(argv[0], argv[1:]...), log: log, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and reaps the process.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits up to within, then kills.
func (p *proc) stop(within time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(within):
		p.kill()
		return fmt.Errorf("%s did not stop within %s of SIGTERM", p.name, within)
	}
}

// netLab is a network namespace for the agent joined to the host by a veth
// pair: hostIP on the host's end, nsIP on the namespace's end.
type netLab struct {
	ns, hostIf, nsIf string
	hostIP, nsIP     string
}

func newNetLab(t *testing.T) *netLab {
	t.Helper()
	id := os.Getpid() % 100000
	n := &netLab{
		ns:     fmt.Sprintf("ferryfault%d", id),
		hostIf: fmt.Sprintf("ffh%d", id),
		nsIf:   fmt.Sprintf("ffa%d", id),
	}
	a, b := 64+rand.IntN(60), rand.IntN(63)*4
	n.hostIP, n.nsIP = fmt.Sprintf("10.%d.%d.%d", a, id%250, b+1), fmt.Sprintf("10.%d.%d.%d", a, id%250, b+2)
	t.Cleanup(func() {
		_ = sh("ip", "link", "del", n.hostIf)
		_ = sh("ip", "netns", "del", n.ns)
	})
	mustSh(t, "ip", "netns", "add", n.ns)
	mustSh(t, "ip", "link", "add", n.hostIf, "type", "veth", "peer", "name", n.nsIf)
	mustSh(t, "ip", "link", "set", n.nsIf, "netns", n.ns)
	mustSh(t, "ip", "addr", "add", n.hostIP+"/30", "dev", n.hostIf)
	mustSh(t, "ip", "link", "set", n.hostIf, "up")
	mustSh(t, "ip", "netns", "exec", n.ns, "ip", "addr", "add", n.nsIP+"/30", "dev", n.nsIf)
	mustSh(t, "ip", "netns", "exec", n.ns, "ip", "link", "set", n.nsIf, "up")
	mustSh(t, "ip", "netns", "exec", n.ns, "ip", "link", "set", "lo", "up")
	return n
}

// in runs a command in the agent's namespace.
func (n *netLab) in(name string, args ...string) error {
	return sh("ip", append([]string{"netns", "exec", n.ns, name}, args...)...)
}

// argv wraps argv to run in the agent's network namespace only (nsenter
// keeps the mount namespace, so tracefs stays visible to eBPF).
func (n *netLab) argv(argv ...string) []string {
	return append([]string{"nsenter", "--net=/var/run/netns/" + n.ns, "--"}, argv...)
}

// link sets the host end of the veth pair up or down.
func (n *netLab) link(up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return sh("ip", "link", "set", n.hostIf, state)
}

// loss drops pct % of the packets the namespace sends and receives
// (nftables numgen: this kernel has no netem), or removes the rule.
func (n *netLab) loss(pct int) error {
	if pct == 0 {
		return n.in("nft", "delete", "table", "inet", "ferryfault")
	}
	rule := fmt.Sprintf(`table inet ferryfault {
  chain in { type filter hook input priority 0; numgen random mod 100 < %d drop; }
  chain out { type filter hook output priority 0; numgen random mod 100 < %d drop; }
}`, pct, pct)
	f, err := os.CreateTemp("", "ferryfault-*.nft")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(rule); err != nil {
		return err
	}
	f.Close()
	return n.in("nft", "-f", f.Name())
}

// slow limits what the namespace sends with a token bucket (tc tbf), or
// removes it when rate is "".
func (n *netLab) slow(rate string) error {
	if rate == "" {
		return n.in("tc", "qdisc", "del", "dev", n.nsIf, "root")
	}
	return n.in("tc", "qdisc", "add", "dev", n.nsIf, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms")
}

// toxiproxy is a running Toxiproxy server with one proxy, "dataplane".
type toxiproxy struct {
	api string
	p   *proc
}

func startToxiproxy(t *testing.T, listen, upstream string, log *logBuffer) *toxiproxy {
	t.Helper()
	path, err := exec.LookPath("toxiproxy-server")
	if err != nil {
		gp, _ := exec.Command("go", "env", "GOPATH").Output()
		path = filepath.Join(strings.TrimSpace(string(gp)), "bin", "toxiproxy-server")
		if _, err := os.Stat(path); err != nil {
			skip(t, "toxiproxy-server is not installed (scripts/setup.sh installs it)")
		}
	}
	port := freePort(t, "127.0.0.1")
	host, portStr, _ := net.SplitHostPort(port)
	p, err := startProc("toxiproxy", log, path, "-host", host, "-port", portStr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.kill() })
	tp := &toxiproxy{api: "http://" + port, p: p}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := tp.call("POST", "/proxies", map[string]any{"name": "dataplane", "listen": listen, "upstream": upstream, "enabled": true}); err == nil {
			return tp
		} else if time.Now().After(deadline) {
			t.Fatalf("toxiproxy: %v\n%s", err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// toxiClient opens a connection per call: several lanes call Toxiproxy
// at once, and a kept-alive connection that its server closes makes a
// POST fail with EOF (Go retries only idempotent requests).
var toxiClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

func (tp *toxiproxy) call(method, path string, body any) error {
	var raw []byte
	if body != nil {
		raw, _ = json.Marshal(body)
	}
	var err error
	for try := 0; try < 3; try++ {
		if try > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		var status int
		var msg []byte
		status, msg, err = tp.do(method, path, raw)
		switch {
		case err != nil:
			continue // transport error: try again
		case status == http.StatusConflict && method == "POST" && try > 0,
			status == http.StatusNotFound && method == "DELETE" && try > 0:
			return nil // the failed try did take effect
		case status >= 300:
			return fmt.Errorf("toxiproxy %s %s: %d: %s", method, path, status, msg)
		}
		return nil
	}
	return fmt.Errorf("toxiproxy %s %s: %w", method, path, err)
}

func (tp *toxiproxy) do(method, path string, body []byte) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, tp.api+path, r)
	if err != nil {
		return 0, nil, err
	}
	resp, err := toxiClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, msg, nil
}

// toxic adds a toxic in both directions.
func (tp *toxiproxy) toxic(name, kind string, attrs map[string]any) error {
	for _, stream := range []string{"upstream", "downstream"} {
		if err := tp.call("POST", "/proxies/dataplane/toxics", map[string]any{
			"name": name + "_" + stream, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attrs,
		}); err != nil {
			return err
		}
	}
	return nil
}

func (tp *toxiproxy) untoxic(name string) error {
	var first error
	for _, stream := range []string{"upstream", "downstream"} {
		if err := tp.call("DELETE", "/proxies/dataplane/toxics/"+name+"_"+stream, nil); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func freePort(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// loopFile makes a sparse file of size bytes on a loop device.
func loopFile(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", path).CombinedOutput()
	if err != nil {
		skip(t, fmt.Sprintf("losetup failed: %v %s", err, out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = sh("losetup", "-d", dev) })
	return dev
}
