package config

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, doc string
		wantErr   string
		want      Server
	}{
		{name: "empty", doc: ""},
		{name: "full", doc: "data_dir: /d\nlisten: :9\ndatabase: postgres://x\n", want: Server{DataDir: "/d", Listen: ":9", Database: "postgres://x"}},
		{name: "unknown key", doc: "data_dri: /d\n", wantErr: "data_dri"},
		{name: "wrong type", doc: "dev: [1]\n", wantErr: "cannot unmarshal"},
		{name: "two docs", doc: "dev: true\n---\ndev: false\n", wantErr: "one document"},
		{name: "garbage", doc: "\t: : :", wantErr: "parse yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFinish(t *testing.T) {
	c := Server{Dev: true, DataDir: "/d"}
	if err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	if c.Database != "sqlite:/d/ferry.db" || c.Listen != ":8443" || c.DataListen != ":1500" {
		t.Fatalf("dev defaults: %+v", c)
	}
	c = Server{DataDir: "/d"}
	err := c.Finish()
	for _, k := range []string{"database", "ca_cert", "ca_key", "tls_cert", "tls_key"} {
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Fatalf("non-dev error %v does not name %s", err, k)
		}
	}
	if err := (&Server{Dev: true}).Finish(); err == nil || !strings.Contains(err.Error(), "data_dir") {
		t.Fatalf("missing data dir: %v", err)
	}
	if err := (&Server{Dev: true, DataDir: "/d", Listen: "8443"}).Finish(); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("bad listen: %v", err)
	}
	if err := (&Server{Dev: true, DataDir: "/d", Database: "mysql://x"}).Finish(); err == nil || !strings.Contains(err.Error(), "database") {
		t.Fatalf("bad database: %v", err)
	}
}

func TestGCInterval(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"", DefaultGCInterval, false},
		{"0", 0, false},
		{"off", 0, false},
		{"90m", 90 * time.Minute, false},
		{"-1h", 0, true},
		{"6", 0, true},
		{"daily", 0, true},
	}
	for _, tt := range tests {
		c := Server{Dev: true, DataDir: "/d", GCInterval: tt.in}
		err := c.Finish()
		if tt.wantErr {
			if err == nil || !strings.Contains(err.Error(), "gc_interval") {
				t.Errorf("gc_interval %q: error %v, want one naming gc_interval", tt.in, err)
			}
			continue
		}
		if err != nil || c.GCEvery != tt.want {
			t.Errorf("gc_interval %q: %v, %v; want %v", tt.in, c.GCEvery, err, tt.want)
		}
	}
}

func TestApplyEnv(t *testing.T) {
	env := map[string]string{"FERRY_DATA_DIR": "/e", "FERRY_DEV": "1", "FERRY_LISTEN": ""}
	c := Server{Listen: ":1"}
	c.ApplyEnv(func(k string) string { return env[k] })
	if c.DataDir != "/e" || !c.Dev || c.Listen != ":1" {
		t.Fatalf("got %+v", c)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("data_dir: /d\ndev: true\n"))
	f.Add([]byte("listen: [\n"))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err == nil {
			_ = c.Finish()
		}
	})
}

func TestUnstableNetworkSettings(t *testing.T) {
	tests := []struct {
		drops, window string
		wantDrops     int
		wantWindow    time.Duration
		wantErr       string
	}{
		{"", "", 0, 0, ""},
		{"5", "30m", 5, 30 * time.Minute, ""},
		{"2", "1m", 2, time.Minute, ""},
		{"64", "", 64, 0, ""},
		{"1", "", 0, 0, "unstable_drops"},
		{"65", "", 0, 0, "unstable_drops"},
		{"three", "", 0, 0, "unstable_drops"},
		{"", "30s", 0, 0, "unstable_window"},
		{"", "10", 0, 0, "unstable_window"},
		{"", "-10m", 0, 0, "unstable_window"},
	}
	for _, tt := range tests {
		c := Server{Dev: true, DataDir: "/d", UnstableDrops: tt.drops, UnstableWindow: tt.window}
		err := c.Finish()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q/%q: error %v, want one naming %s", tt.drops, tt.window, err, tt.wantErr)
			}
			continue
		}
		if err != nil || c.Drops != tt.wantDrops || c.Window != tt.wantWindow {
			t.Errorf("%q/%q: %d, %v, %v; want %d, %v", tt.drops, tt.window, c.Drops, c.Window, err, tt.wantDrops, tt.wantWindow)
		}
	}
	// From YAML and the environment too.
	c, err := Parse([]byte("unstable_drops: \"4\"\nunstable_window: 20m\n"))
	if err != nil || c.UnstableDrops != "4" || c.UnstableWindow != "20m" {
		t.Fatalf("yaml: %+v, %v", c, err)
	}
	c.ApplyEnv(func(k string) string {
		return map[string]string{"FERRY_UNSTABLE_DROPS": "6"}[k]
	})
	if c.UnstableDrops != "6" {
		t.Fatalf("FERRY_UNSTABLE_DROPS not applied: %q", c.UnstableDrops)
	}
}

// TestParsedSettings: the settings parsed into numbers (the bulk credit's
// MiB, the agent certificate validity), from the file, the environment,
// and refused with an error naming the key and the value.
func TestParsedSettings(t *testing.T) {
	type check struct {
		in      string
		want    int64
		wantErr bool
	}
	for _, st := range []struct {
		key, env string
		set      func(*Server, string)
		get      func(*Server) (raw string, parsed int64)
		checks   []check
	}{
		{"bulk_credit_pool_mib", "FERRY_BULK_CREDIT_POOL_MIB",
			func(c *Server, v string) { c.BulkCreditPool = v },
			func(c *Server) (string, int64) { return c.BulkCreditPool, c.CreditPool },
			[]check{{"", 0, false}, {"1024", 1 << 30, false}, {"64", 64 << 20, false}, {"0", -1, false},
				{"65536", 64 << 30, false}, {"65537", 0, true}, {"-1", 0, true}, {"1G", 0, true}}},
		{"bulk_credit_mib", "FERRY_BULK_CREDIT_MIB",
			func(c *Server, v string) { c.BulkCredit = v },
			func(c *Server) (string, int64) { return c.BulkCredit, c.AgentBulkCredit },
			[]check{{"", 0, false}, {"64", 64 << 20, false}, {"16", 16 << 20, false}, {"1024", 1 << 30, false},
				{"15", 0, true}, {"1025", 0, true}, {"0", 0, true}, {"64M", 0, true}}},
		{"agent_cert_validity", "FERRY_AGENT_CERT_VALIDITY",
			func(c *Server, v string) { c.AgentCertValidity = v },
			func(c *Server) (string, int64) { return c.AgentCertValidity, int64(c.AgentCertLife) },
			[]check{{"", 0, false}, {"2160h", int64(90 * 24 * time.Hour), false}, {"24h", int64(24 * time.Hour), false},
				{"87600h", int64(MaxAgentCertValidity), false}, {"23h59m", 0, true}, {"87601h", 0, true}, {"365d", 0, true}, {"-24h", 0, true}}},
	} {
		t.Run(st.key, func(t *testing.T) {
			for _, tt := range st.checks {
				c := Server{Dev: true, DataDir: "/d"}
				st.set(&c, tt.in)
				err := c.Finish()
				if tt.wantErr {
					if err == nil || !strings.Contains(err.Error(), st.key) || !strings.Contains(err.Error(), tt.in) {
						t.Errorf("%q: error %v, want one naming %s and the value", tt.in, err, st.key)
					}
					continue
				}
				if _, got := st.get(&c); err != nil || got != tt.want {
					t.Errorf("%q: %d, %v; want %d", tt.in, got, err, tt.want)
				}
			}
			c, err := Parse([]byte(st.key + ": \"256\"\n"))
			if raw, _ := st.get(&c); err != nil || raw != "256" {
				t.Fatalf("from YAML: %+v, %v", c, err)
			}
			c.ApplyEnv(func(k string) string { return map[string]string{st.env: "32"}[k] })
			if raw, _ := st.get(&c); raw != "32" {
				t.Fatalf("%s not applied: %q", st.env, raw)
			}
		})
	}
}
