package replbench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrymigrate/ferry/bench/harness"
	"github.com/ferrymigrate/ferry/internal/directio"
)

// tlsPipe sends the device's raw bytes through a TLS 1.3 connection on
// loopback into a file (written and fsynced, as a replica would be): the
// binding limit of a copy that neither skips zeros nor compresses.
func tlsPipe(ctx context.Context, dev, dir string) (Measure, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Measure{}, fmt.Errorf("tls pipe key: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return Measure{}, fmt.Errorf("tls pipe certificate: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		return Measure{}, fmt.Errorf("tls pipe listen: %w", err)
	}
	defer ln.Close()
	out, err := os.CreateTemp(dir, "tlspipe")
	if err != nil {
		return Measure{}, fmt.Errorf("tls pipe output: %w", err)
	}
	defer os.Remove(out.Name())
	defer out.Close()
	recv := make(chan error, 1)
	var got int64
	go func() {
		c, err := ln.Accept()
		if err != nil {
			recv <- err
			return
		}
		defer c.Close()
		// 1 MiB file writes, as the sender reads: a TLS read returns one
		// 16 KiB record, and a write per record would slow the peer down.
		buf := make([]byte, 1<<20)
		for {
			n, rerr := io.ReadFull(c, buf)
			if n > 0 {
				if _, err := out.Write(buf[:n]); err != nil {
					recv <- err
					return
				}
				got += int64(n)
			}
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				break
			}
			if rerr != nil {
				recv <- rerr
				return
			}
		}
		recv <- out.Sync()
	}()
	// The device is read with O_DIRECT in 1 MiB reads, as dd iflag=direct
	// would and as the agent does: not through the page cache.
	src, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return Measure{}, fmt.Errorf("open %s: %w", dev, err)
	}
	defer src.Close()
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(der)
	pool.AddCert(leaf)
	cpu0, t0 := cpuSelf(), time.Now()
	d := tls.Dialer{Config: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return Measure{}, fmt.Errorf("tls pipe dial: %w", err)
	}
	var sent int64
	buf := directio.Buf(1 << 20)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				c.Close()
				return Measure{}, fmt.Errorf("tls pipe send: %w", err)
			}
			sent += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			c.Close()
			return Measure{}, fmt.Errorf("tls pipe read %s: %w", dev, rerr)
		}
	}
	c.Close()
	if err := <-recv; err != nil {
		return Measure{}, fmt.Errorf("tls pipe receive: %w", err)
	}
	m := measure(NameTLSPipe, time.Since(t0), cpuSelf()-cpu0, sent)
	m.WireBytes = got
	m.Verified = got == sent
	return m, nil
}

// rsyncd is an rsync daemon on 127.0.0.1 serving one writable module.
type rsyncd struct {
	cmd  *exec.Cmd
	port int
	dest string
}

func startRsyncd(dir string) (*rsyncd, error) {
	dest := filepath.Join(dir, "rsync-dest")
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return nil, fmt.Errorf("rsync destination: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("pick a port: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := filepath.Join(dir, "rsyncd.conf")
	text := fmt.Sprintf("use chroot = no\nuid = root\ngid = root\npid file = %s\n[bench]\npath = %s\nread only = no\n",
		filepath.Join(dir, "rsyncd.pid"), dest)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("rsyncd.conf: %w", err)
	}
	cmd := exec.Command("rsync", "--daemon", "--no-detach", "--address=127.0.0.1", fmt.Sprintf("--port=%d", port), "--config="+conf)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start rsync daemon: %w", err)
	}
	r := &rsyncd{cmd: cmd, port: port, dest: dest}
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return r, nil
		}
		if i == 100 {
			r.stop()
			return nil, fmt.Errorf("rsync daemon did not listen: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *rsyncd) stop() {
	r.cmd.Process.Kill()
	r.cmd.Wait()
}

// copy runs the rsync client to the daemon and measures until its copy
// is complete, then compares the copy with src. The CPU time is the
// client's plus the daemon's connection process (both are waited-for
// children: the daemon forks one per connection, which it waits for; its
// CPU shows up once the daemon exits, so the daemon side is counted from
// /proc of the forked child at the end instead).
func (r *rsyncd) copy(src string, bytes int64, name string, args ...string) (Measure, error) {
	before := cpuChildren()
	daemon0 := procCPU(r.cmd.Process.Pid)
	t0 := time.Now()
	a := append(append([]string{}, args...), "--stats", src, fmt.Sprintf("rsync://127.0.0.1:%d/bench/replica.img", r.port))
	out, err := exec.Command("rsync", a...).CombinedOutput()
	if err != nil {
		return Measure{}, fmt.Errorf("rsync: %w: %s", err, out)
	}
	// The daemon fsyncs nothing; flush its file for a fair comparison.
	f, err := os.OpenFile(filepath.Join(r.dest, "replica.img"), os.O_RDWR, 0)
	if err != nil {
		return Measure{}, fmt.Errorf("open rsync copy: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return Measure{}, fmt.Errorf("sync rsync copy: %w", err)
	}
	el := time.Since(t0)
	cpu := cpuChildren() - before + procCPU(r.cmd.Process.Pid) - daemon0
	m := measure(name, el, cpu, bytes)
	m.WireBytes = parseSent(string(out))
	a1, err := os.Open(src)
	if err != nil {
		return Measure{}, err
	}
	defer a1.Close()
	st, _ := a1.Stat()
	h1, err := harness.FileSHA(a1, st.Size())
	if err != nil {
		return Measure{}, err
	}
	h2, err := harness.FileSHA(f, st.Size())
	if err != nil {
		return Measure{}, err
	}
	m.Verified = h1 == h2
	return m, nil
}
