package controlplane

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// DiskStaging is one replica disk's use of the staging store.
type DiskStaging struct {
	// DiskID is the replica disk's id: the server id, a dot, the disk name.
	DiskID       string
	LogicalBytes int64 // non-zero data in the newest block map
	StoredBytes  int64 // distinct chunks the disk references, as stored
	JournalBytes int64
	Snapshots    int
}

// StagingUsage reports the staging store's use; package server adapts the
// replica store to it. It may be slow (it reads every block map).
type StagingUsage interface {
	StagingUsage(ctx context.Context) (disks []DiskStaging, storeStored int64, err error)
}

// usageTTL is how long one staging-usage read is reused.
const usageTTL = time.Minute

// usageCache keeps the last staging-usage read.
type usageCache struct {
	mu     sync.Mutex
	at     time.Time     // guarded by mu
	disks  []DiskStaging // guarded by mu
	stored int64         // guarded by mu
}

func (s *Server) stagingUsage(ctx context.Context) ([]DiskStaging, int64, error) {
	if s.Usage == nil {
		return nil, 0, nil
	}
	s.usage.mu.Lock()
	defer s.usage.mu.Unlock()
	now := s.now()
	if s.usage.at.IsZero() || now.Sub(s.usage.at) >= usageTTL {
		d, st, err := s.Usage.StagingUsage(ctx)
		if err != nil {
			return nil, 0, fmt.Errorf("read staging usage: %w", err)
		}
		s.usage.disks, s.usage.stored, s.usage.at = d, st, now
	}
	return s.usage.disks, s.usage.stored, nil
}

// UsageReport builds the usage report of every live server.
func (s *Server) UsageReport(ctx context.Context) (*api.UsageReport, error) {
	srvs, err := allServers(ctx, s.Store, ferry.ServerFilter{})
	if err != nil {
		return nil, err
	}
	disks, stored, err := s.stagingUsage(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	rep := &api.UsageReport{Time: now, BytesSentSince: s.Started, Servers: make([]api.ServerUsage, 0, len(srvs)), StoreStoredBytes: stored}
	for _, srv := range srvs {
		u := api.ServerUsage{SourceServerID: srv.ID, Hostname: srv.Hostname, DiskBytes: srv.TotalBytes(),
			DaysReplicated: srv.Replication.ReplicatingSeconds / 86400}
		for _, d := range disks {
			if strings.HasPrefix(d.DiskID, srv.ID+".") {
				u.LogicalBytes += d.LogicalBytes
				u.StoredBytes += d.StoredBytes + d.JournalBytes
				u.Snapshots += d.Snapshots
			}
		}
		// The replication server adds to each disk's count about once a
		// second, so the store's figure survives restarts of either side.
		u.BytesSent = srv.SentBytes()
		rep.Servers = append(rep.Servers, u)
	}
	return rep, nil
}

// wantsCSV reports whether a request asks for CSV: ?format=csv or an
// Accept header naming text/csv.
func wantsCSV(r *http.Request) (bool, error) {
	switch f := r.URL.Query().Get("format"); f {
	case "csv":
		return true, nil
	case "json":
		return false, nil
	case "":
	default:
		return false, badRequest("format %q: want json or csv", f)
	}
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "text/csv" {
			return true, nil
		}
	}
	return false, nil
}

func (s *Server) usageReport(w http.ResponseWriter, r *http.Request, _ *caller) error {
	if err := checkParams(r.URL.Query(), "format"); err != nil {
		return err
	}
	asCSV, err := wantsCSV(r)
	if err != nil {
		return err
	}
	rep, err := s.UsageReport(r.Context())
	if err != nil {
		return err
	}
	if !asCSV {
		writeJSON(w, http.StatusOK, rep)
		return nil
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="ferry-usage.csv"`)
	return WriteUsageCSV(w, rep)
}

// UsageCSVHeader is the header row of the usage CSV.
var UsageCSVHeader = []string{"source_server_id", "hostname", "disk_bytes", "logical_bytes", "stored_bytes", "snapshots", "days_replicated", "bytes_sent"}

// WriteUsageCSV writes a usage report as CSV, one row per server.
func WriteUsageCSV(w io.Writer, rep *api.UsageReport) error {
	cw := csv.NewWriter(w)
	_ = cw.Write(UsageCSVHeader)
	for _, u := range rep.Servers {
		_ = cw.Write([]string{u.SourceServerID, csvSafe(u.Hostname), strconv.FormatInt(u.DiskBytes, 10), strconv.FormatInt(u.LogicalBytes, 10),
			strconv.FormatInt(u.StoredBytes, 10), strconv.Itoa(u.Snapshots), strconv.FormatFloat(u.DaysReplicated, 'f', 2, 64), strconv.FormatInt(u.BytesSent, 10)})
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("write usage csv: %w", err)
	}
	return nil
}

// csvSafe keeps a spreadsheet from reading a cell as a formula.
func csvSafe(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		return "'" + v
	}
	return v
}

// Console log limits, in KiB.
const (
	defaultConsoleKiB = 64
	maxConsoleKiB     = 1024
)

// serverConsole serves the tail of the launched instance's console log.
// The file is the one the launcher recorded on the server; no path comes
// from the request.
func (s *Server) serverConsole(w http.ResponseWriter, r *http.Request, _ *caller) error {
	q := r.URL.Query()
	if err := checkParams(q, "kib"); err != nil {
		return err
	}
	kib := defaultConsoleKiB
	if v := q.Get("kib"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxConsoleKiB {
			return badRequest("kib %q: want 1 to %d", v, maxConsoleKiB)
		}
		kib = n
	}
	srv, err := s.Store.Server(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	if srv.Launched == nil || srv.Launched.ConsoleLog == "" {
		return apiErr(http.StatusNotFound, api.CodeNotFound, "server %s has no launched instance with a console log; start a test launch first", srv.ID)
	}
	tail, size, err := readTail(srv.Launched.ConsoleLog, int64(kib)<<10)
	if errors.Is(err, os.ErrNotExist) {
		return apiErr(http.StatusNotFound, api.CodeNotFound, "the console log of instance %s is gone (the instance was cleaned up)", srv.Launched.ID)
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Ferry-Instance", srv.Launched.ID)
	w.Header().Set("X-Ferry-Console-Size", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(tail)
	return err
}

// readTail returns up to n bytes from the end of a regular file and the
// file's size.
func readTail(path string, n int64) ([]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("open console log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("stat console log: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("console log %s is not a regular file", path)
	}
	size := st.Size()
	off := max(size-n, 0)
	buf := make([]byte, size-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, fmt.Errorf("read console log: %w", err)
	}
	return buf, size, nil
}

// Replicas deletes source servers' replicas; the data plane provides it.
type Replicas interface {
	// DeleteReplica deletes every replica disk of a server and returns
	// how many; a disk in use is an error wrapping ferry.ErrConflict.
	DeleteReplica(ctx context.Context, serverID string) (int, error)
}
