package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Server is the configuration of `ferry server`.
type Server struct {
	// Dev runs with everything embedded and created on first start.
	Dev bool `yaml:"dev"`
	// DataDir holds the metadata store (SQLite), keys and the replica store.
	DataDir string `yaml:"data_dir"`
	// Listen is the API and dashboard address (default ":8443").
	Listen string `yaml:"listen"`
	// DataListen is where agents connect (default ":1500").
	DataListen string `yaml:"data_listen"`
	// Database is "sqlite:PATH" or a postgres:// URL.
	Database string `yaml:"database"`
	// CACert and CAKey are the PEM files of the CA that signs agent
	// certificates.
	CACert string `yaml:"ca_cert"`
	CAKey  string `yaml:"ca_key"`
	// TLSCert and TLSKey are the server's own certificate and key, PEM.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// Advertise is the host name or address agents reach this server by;
	// it goes into the server certificate (dev) and the data-plane address
	// told to agents.
	Advertise string `yaml:"advertise"`
	// QEMUBinary is the qemu-system-x86_64 the qemu launch target runs
	// (a path, or a name looked up on PATH; default qemu-system-x86_64).
	QEMUBinary string `yaml:"qemu_binary"`
	// GCInterval is how often the server garbage-collects its replica
	// store while it runs, as a Go duration ("6h", the default; "0" or
	// "off" never). Finish parses it into GCEvery.
	GCInterval string `yaml:"gc_interval"`
	// GCEvery is GCInterval parsed by Finish; 0 means never.
	GCEvery time.Duration `yaml:"-"`
	// UnstableDrops is how many unplanned drops of a server's data-plane
	// connection within UnstableWindow give it UNSTABLE_NETWORK (2 to
	// MaxUnstableDrops; default 3). Finish parses it into Drops.
	UnstableDrops string `yaml:"unstable_drops"`
	// UnstableWindow is the time those drops are counted in, and how long
	// a session must then stay up to clear the error (a Go duration of a
	// minute or more; default 10m). Finish parses it into Window.
	UnstableWindow string `yaml:"unstable_window"`
	// Drops and Window are UnstableDrops and UnstableWindow parsed by
	// Finish; 0 means the replication server's default.
	Drops  int           `yaml:"-"`
	Window time.Duration `yaml:"-"`
	// BulkCreditPool is how much write credit, in MiB, the replication
	// server may grant beyond the usual 16 MiB to all agents copying whole
	// disks together (0 to MaxBulkCreditPoolMiB; 0 turns the bulk credit
	// off; default 1024). Finish parses it into CreditPool.
	BulkCreditPool string `yaml:"bulk_credit_pool_mib"`
	// CreditPool is BulkCreditPool in bytes, parsed by Finish: 0 means
	// the replication server's default, negative none.
	CreditPool int64 `yaml:"-"`
	// BulkCredit is the write credit, in MiB, of one agent copying whole
	// disks (MinBulkCreditMiB to MaxBulkCreditMiB; the minimum is the
	// usual credit, so no extra; default 64). Finish parses it into
	// AgentBulkCredit.
	BulkCredit string `yaml:"bulk_credit_mib"`
	// AgentBulkCredit is BulkCredit in bytes, parsed by Finish: 0 means
	// the replication server's default.
	AgentBulkCredit int64 `yaml:"-"`
	// AgentCertValidity is how long the agent certificates pairing and
	// renewal issue last, as a Go duration (MinAgentCertValidity to
	// MaxAgentCertValidity, never past the CA's end; default 8760h, a
	// year). Agents renew with a third of it left. Finish parses it into
	// AgentCertLife.
	AgentCertValidity string `yaml:"agent_cert_validity"`
	// AgentCertLife is AgentCertValidity parsed by Finish: 0 means the
	// default.
	AgentCertLife time.Duration `yaml:"-"`
}

// MinAgentCertValidity and MaxAgentCertValidity bound agent_cert_validity:
// a day, so that renewals stay hours apart, to ten years, the CA's own.
const (
	MinAgentCertValidity = 24 * time.Hour
	MaxAgentCertValidity = 10 * 365 * 24 * time.Hour
)

// MinBulkCreditMiB and MaxBulkCreditMiB bound bulk_credit_mib: from the
// credit every agent has to what one session may usefully hold.
const (
	MinBulkCreditMiB = 16
	MaxBulkCreditMiB = 1024
)

// MaxBulkCreditPoolMiB is the most bulk_credit_pool_mib may ask for.
const MaxBulkCreditPoolMiB = 64 << 10

// MaxUnstableDrops is the most drops unstable_drops may ask for: the
// replication server keeps at most that many drop times per server.
const MaxUnstableDrops = 64

// Defaults for addresses.
const (
	DefaultListen     = ":8443"
	DefaultDataListen = ":1500"
)

// DefaultGCInterval is how often the server garbage-collects its replica
// store unless gc_interval says otherwise: deleted snapshots' space comes
// back within hours, and a run costs one pass over the block maps.
const DefaultGCInterval = 6 * time.Hour

// maxFileBytes bounds a configuration file.
const maxFileBytes = 1 << 20

// Load reads a YAML configuration file. Unknown keys are errors, so a
// misspelt setting is not silently ignored.
func Load(path string) (Server, error) {
	f, err := os.Open(path)
	if err != nil {
		return Server{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return Server{}, fmt.Errorf("config: read %s: %w", path, err)
	}
	if len(data) > maxFileBytes {
		return Server{}, fmt.Errorf("config: %s is larger than %d bytes", path, maxFileBytes)
	}
	c, err := Parse(data)
	if err != nil {
		return Server{}, fmt.Errorf("config: %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a YAML configuration document.
func Parse(data []byte) (Server, error) {
	var c Server
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Server{}, fmt.Errorf("parse yaml: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Server{}, errors.New("parse yaml: want one document, found more")
	}
	return c, nil
}

// EnvVars maps each setting to the environment variable that sets it.
var EnvVars = map[string]string{
	"data_dir":             "FERRY_DATA_DIR",
	"listen":               "FERRY_LISTEN",
	"data_listen":          "FERRY_DATA_LISTEN",
	"database":             "FERRY_DATABASE",
	"ca_cert":              "FERRY_CA_CERT",
	"ca_key":               "FERRY_CA_KEY",
	"tls_cert":             "FERRY_TLS_CERT",
	"tls_key":              "FERRY_TLS_KEY",
	"advertise":            "FERRY_ADVERTISE",
	"qemu_binary":          "FERRY_QEMU_BINARY",
	"gc_interval":          "FERRY_GC_INTERVAL",
	"unstable_drops":       "FERRY_UNSTABLE_DROPS",
	"unstable_window":      "FERRY_UNSTABLE_WINDOW",
	"bulk_credit_pool_mib": "FERRY_BULK_CREDIT_POOL_MIB",
	"bulk_credit_mib":      "FERRY_BULK_CREDIT_MIB",
	"agent_cert_validity":  "FERRY_AGENT_CERT_VALIDITY",
}

// ApplyEnv sets every field whose environment variable is set and
// non-empty; getenv is os.Getenv outside tests.
func (c *Server) ApplyEnv(getenv func(string) string) {
	for key, p := range c.fields() {
		if v := getenv(EnvVars[key]); v != "" {
			*p = v
		}
	}
	if v := getenv("FERRY_DEV"); v == "1" || v == "true" {
		c.Dev = true
	}
}

func (c *Server) fields() map[string]*string {
	return map[string]*string{
		"data_dir": &c.DataDir, "listen": &c.Listen, "data_listen": &c.DataListen,
		"database": &c.Database, "ca_cert": &c.CACert, "ca_key": &c.CAKey,
		"tls_cert": &c.TLSCert, "tls_key": &c.TLSKey, "advertise": &c.Advertise,
		"qemu_binary": &c.QEMUBinary, "gc_interval": &c.GCInterval,
		"unstable_drops": &c.UnstableDrops, "unstable_window": &c.UnstableWindow,
		"bulk_credit_pool_mib": &c.BulkCreditPool, "bulk_credit_mib": &c.BulkCredit,
		"agent_cert_validity": &c.AgentCertValidity,
	}
}

// Set sets one setting by its YAML key; the command uses it for flags.
func (c *Server) Set(key, value string) error {
	p, ok := c.fields()[key]
	if !ok {
		return fmt.Errorf("config: unknown setting %q", key)
	}
	*p = value
	return nil
}

// Finish fills defaults and checks the configuration. In dev mode only the
// data directory is needed and everything else is derived from it; outside
// dev mode every piece must be given, and the error lists all that are
// missing.
func (c *Server) Finish() error {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.DataListen == "" {
		c.DataListen = DefaultDataListen
	}
	if c.DataDir == "" {
		return errors.New("config: data_dir is required (--data, FERRY_DATA_DIR or data_dir in the config file)")
	}
	if c.Dev {
		if c.Database == "" {
			c.Database = "sqlite:" + c.DataDir + "/ferry.db"
		}
	} else {
		var missing []string
		for _, k := range []string{"database", "ca_cert", "ca_key", "tls_cert", "tls_key"} {
			if *c.fields()[k] == "" {
				missing = append(missing, fmt.Sprintf("%s (--%s or %s)", k, strings.ReplaceAll(k, "_", "-"), EnvVars[k]))
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("config: without --dev these settings are required: %s", strings.Join(missing, ", "))
		}
	}
	for _, a := range []struct{ key, v string }{{"listen", c.Listen}, {"data_listen", c.DataListen}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return fmt.Errorf("config: %s %q: want host:port or :port: %w", a.key, a.v, err)
		}
	}
	if !strings.HasPrefix(c.Database, "sqlite:") && !strings.HasPrefix(c.Database, "postgres://") && !strings.HasPrefix(c.Database, "postgresql://") {
		return fmt.Errorf("config: database %q: want sqlite:PATH or postgres://…", c.Database)
	}
	switch c.GCInterval {
	case "":
		c.GCEvery = DefaultGCInterval
	case "0", "off":
		c.GCEvery = 0
	default:
		d, err := time.ParseDuration(c.GCInterval)
		if err != nil || d <= 0 {
			return fmt.Errorf("config: gc_interval %q: want a duration such as 6h, or off", c.GCInterval)
		}
		c.GCEvery = d
	}
	if c.UnstableDrops != "" {
		n, err := strconv.Atoi(c.UnstableDrops)
		if err != nil || n < 2 || n > MaxUnstableDrops {
			return fmt.Errorf("config: unstable_drops %q: want a whole number from 2 to %d", c.UnstableDrops, MaxUnstableDrops)
		}
		c.Drops = n
	}
	if c.UnstableWindow != "" {
		d, err := time.ParseDuration(c.UnstableWindow)
		if err != nil || d < time.Minute {
			return fmt.Errorf("config: unstable_window %q: want a duration of a minute or more, such as 10m", c.UnstableWindow)
		}
		c.Window = d
	}
	if c.BulkCreditPool != "" {
		n, err := parseMiB("bulk_credit_pool_mib", c.BulkCreditPool, 0, MaxBulkCreditPoolMiB, "0 (off)")
		if err != nil {
			return err
		}
		c.CreditPool = n
		if n == 0 {
			c.CreditPool = -1
		}
	}
	if c.BulkCredit != "" {
		n, err := parseMiB("bulk_credit_mib", c.BulkCredit, MinBulkCreditMiB, MaxBulkCreditMiB, "16 (no more than every agent has)")
		if err != nil {
			return err
		}
		c.AgentBulkCredit = n
	}
	if c.AgentCertValidity != "" {
		d, err := time.ParseDuration(c.AgentCertValidity)
		if err != nil || d < MinAgentCertValidity || d > MaxAgentCertValidity {
			return fmt.Errorf("config: agent_cert_validity %q: want a duration from 24h to 87600h (ten years), such as 2160h for 90 days", c.AgentCertValidity)
		}
		c.AgentCertLife = d
	}
	return nil
}

// parseMiB reads setting key's v, a whole number of MiB from lo to hi,
// and returns it in bytes; low says what lo means to the operator.
func parseMiB(key, v string, lo, hi int64, low string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("config: %s %q: want a whole number of MiB from %s to %d", key, v, low, hi)
	}
	return n << 20, nil
}
