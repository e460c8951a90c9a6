package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// TestDataPlaneRefusesWeakTLS dials the real data-plane port of a running
// server with TLS 1.2, with TLS 1.3 and no client certificate, with a
// certificate from another CA and in plain text: every one is refused.
func TestDataPlaneRefusesWeakTLS(t *testing.T) {
	s := startServer(t, filepath.Join(t.TempDir(), "server"))
	stranger := selfSignedClientCert(t)
	cases := []struct {
		name string
		conf *tls.Config
	}{
		{"TLS 1.2 with no certificate", &tls.Config{MaxVersion: tls.VersionTLS12}},
		{"TLS 1.2 with a certificate", &tls.Config{MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{stranger}}},
		{"TLS 1.3 with no certificate", &tls.Config{MinVersion: tls.VersionTLS13}},
		{"TLS 1.3 with another CA's certificate", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{stranger}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.conf.InsecureSkipVerify = true // the server's policy is under test, not ours
			err := dataPlaneExchange(s.dataAddr, tc.conf)
			if err == nil {
				t.Fatal("the data plane accepted the connection")
			}
			t.Logf("refused: %v", err)
		})
	}
	t.Run("plain text", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", s.dataAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write([]byte("FERRY HELLO in plain text\r\n\r\n"))
		b, err := io.ReadAll(c)
		if err == nil && bytes.Contains(b, []byte("FERRY")) {
			t.Fatalf("the data plane answered plain text: %q", b)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the data plane kept a plain-text connection open")
		}
	})
}

// dataPlaneExchange handshakes and reads once: in TLS 1.3 a missing or
// foreign client certificate is refused after the client's side of the
// handshake completes, so the read is where the refusal shows. A read
// that times out means the server kept the connection: accepted.
func dataPlaneExchange(addr string, conf *tls.Config) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, conf)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	var b [1]byte
	_, err = c.Read(b[:])
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	if err == nil {
		return nil
	}
	return err
}

func selfSignedClientCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "not-a-ferry-agent"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestSecretsAndFileModes runs the main job — server, login, tokens,
// install token, a replicating agent, a drained snapshot, a disconnect —
// and then checks that no secret appears in any log or CLI error output,
// that a disconnected agent's live session ends within seconds and its
// saved certificate is refused, and that key and state files are 0600.
func TestSecretsAndFileModes(t *testing.T) {
	dev := loopDevice(t, "64M")
	dir := t.TempDir()
	data := filepath.Join(dir, "server")
	s := startServer(t, data)
	cliLog := &bytes.Buffer{}
	env := []string{"FERRY_CONFIG=" + filepath.Join(dir, "cli.json"), "FERRY_ADDR=", "FERRY_TOKEN=", "FERRY_CA_FINGERPRINT="}
	cli := func(wantOK bool, extraEnv []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(append(os.Environ(), env...), extraEnv...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cliLog.WriteString(stderr.String()) // not argv: that holds secrets by design
		if (err == nil) != wantOK {
			t.Fatalf("ferry %s: %v (want success %v)\n%s%s", strings.Join(args, " "), err, wantOK, stderr.String(), stdout.String())
		}
		return stdout.String()
	}
	secrets := map[string]string{"dev admin token": s.token}

	cli(true, nil, "login", "--addr", s.addr, "--token", s.token, "--ca-fingerprint", s.fingerprint)
	var created struct{ Secret string }
	_ = json.Unmarshal([]byte(cli(true, nil, "tokens", "create", "--name", "ops", "--role", "operator", "-o", "json")), &created)
	secrets["operator token"] = created.Secret
	var it struct{ Secret string }
	_ = json.Unmarshal([]byte(cli(true, nil, "install-tokens", "create", "--name", "sec", "-o", "json")), &it)
	secrets["install token"] = it.Secret
	for name, v := range secrets {
		if len(v) < 20 {
			t.Fatalf("no %s to look for (%q)", name, v)
		}
	}
	// Failing calls with secrets in their arguments must not echo them.
	cli(false, []string{"FERRY_TOKEN=" + secrets["operator token"] + "x"}, "servers", "list")
	cli(false, nil, "login", "--addr", s.addr, "--token", s.token, "--ca-fingerprint", strings.Repeat("ab", 32))

	// A replicating agent.
	state := filepath.Join(dir, "agent")
	agentLog := &bytes.Buffer{}
	agent := exec.Command(bin, "agent", "--server", s.addr, "--install-token", it.Secret, "--ca-fingerprint", s.fingerprint,
		"--state-dir", state, "--disk", dev, "--tracker", "rescan", "--machine-id", "e2e-secrets")
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Wait() }()
	defer func() {
		agent.Process.Kill()
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog)
		}
	}()
	admin, err := clientFor(s, s.token)
	if err != nil {
		t.Fatal(err)
	}
	srv := waitServer(t, admin, 2*time.Minute, func(s *ferry.SourceServer) bool {
		return s.Replication.State == ferry.ReplicationContinuous
	})
	if err := admin.Do(t.Context(), "POST", "/servers/"+srv.ID+"/snapshots", nil, api.TakeSnapshotRequest{Drain: true, TimeoutSeconds: 60}, nil); err != nil {
		t.Fatalf("drained snapshot: %v", err)
	}
	// Key material to look for in the logs: everything the agent keeps.
	for _, f := range []string{"agent.key"} {
		b, err := os.ReadFile(filepath.Join(state, f))
		if err != nil {
			t.Fatal(err)
		}
		addPEMSecrets(secrets, "agent "+f, b)
	}
	filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && (strings.HasSuffix(p, ".key") || strings.Contains(filepath.Base(p), "key")) {
			if b, err := os.ReadFile(p); err == nil {
				addPEMSecrets(secrets, "server "+filepath.Base(p), b)
			}
		}
		return nil
	})

	// Modes, while everything exists.
	checkModes(t, state)
	checkModes(t, data)

	// Disconnect: the live session ends within seconds; a copy of the
	// agent's certificate is refused.
	stolen := filepath.Join(dir, "stolen")
	if err := os.CopyFS(stolen, os.DirFS(state)); err != nil {
		t.Fatal(err)
	}
	disconnected := time.Now()
	cli(true, nil, "servers", "disconnect", srv.ID)
	select {
	case <-agentDone:
		t.Logf("the agent's live session ended %.1fs after the disconnect", time.Since(disconnected).Seconds())
	case <-time.After(15 * time.Second):
		t.Fatal("a disconnected agent kept its live session for 15 s")
	}
	if !strings.Contains(agentLog.String(), "disconnected from the service") {
		t.Errorf("agent output does not say it was disconnected:\n%s", agentLog)
	}
	if out, err := exec.Command(bin, "agent", "--state-dir", stolen, "--once").CombinedOutput(); err == nil {
		t.Fatalf("a disconnected agent's saved certificate still works: %s", out)
	}

	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.done:
		s.done <- err
	case <-time.After(30 * time.Second):
		t.Fatal("server did not stop")
	}
	logs := map[string]string{"server log": s.log.String(), "agent log": agentLog.String(), "CLI error output": cliLog.String()}
	for lname, text := range logs {
		if len(text) == 0 {
			t.Errorf("%s is empty: the scan would prove nothing", lname)
		}
		for sname, secret := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("the %s appears in the %s", sname, lname)
			}
		}
	}
	t.Logf("scanned %d bytes of logs for %d secrets", len(s.log.String())+agentLog.Len()+cliLog.Len(), len(secrets))
}

// addPEMSecrets adds the base64 lines of each PEM block in b (or b itself
// when it is not PEM) to secrets.
func addPEMSecrets(secrets map[string]string, name string, b []byte) {
	found := false
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		found = true
		if !strings.Contains(blk.Type, "PRIVATE") {
			continue
		}
		for i, l := range strings.Split(string(pem.EncodeToMemory(&pem.Block{Type: blk.Type, Bytes: blk.Bytes})), "\n") {
			if len(l) >= 40 && !strings.HasPrefix(l, "-----") {
				secrets[fmt.Sprintf("%s line %d", name, i)] = l
			}
		}
	}
	if !found && len(bytes.TrimSpace(b)) >= 16 {
		secrets[name] = string(bytes.TrimSpace(b))
	}
}

// checkModes fails for any file but a certificate that others can read,
// and any directory that others can enter.
func checkModes(t *testing.T, root string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n++
		switch {
		case d.IsDir() && fi.Mode().Perm()&0o077 != 0:
			t.Errorf("directory %s is mode %v: others can enter it", p, fi.Mode().Perm())
		case fi.Mode().IsRegular() && strings.HasSuffix(p, ".crt"):
			// Certificates are public.
		case fi.Mode().IsRegular() && fi.Mode().Perm()&0o077 != 0:
			t.Errorf("file %s is mode %v, want 0600", p, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d entries, none readable by others", root, n)
}
