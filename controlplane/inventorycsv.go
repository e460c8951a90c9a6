package controlplane

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// The inventory CSV format, shared by import and export. The header row
// names the columns, in any order, case-insensitively. A server is found
// by source_server_id or by hostname (which must then be unique among live
// servers). An empty cell leaves that value as it is. application and wave
// are names; a missing one is created. tags is k=v;k=v and replaces the
// server's tags. Export-only columns are read past on import, so an export
// can be edited and imported back.
const (
	colServerID          = "source_server_id"
	colHostname          = "hostname"
	colApplication       = "application"
	colWave              = "wave"
	colTags              = "tags"
	colCPUs              = "cpus"
	colMemoryMiB         = "memory_mib"
	colTarget            = "target"
	colBootMode          = "boot_mode"
	colDisposition       = "launch_disposition"
	colRightSizing       = "right_sizing"
	colBandwidth         = "bandwidth_bytes_per_sec"
	colReplicationServer = "replication_server"
)

// importColumns are the columns an import applies, in export order.
var importColumns = []string{
	colServerID, colHostname, colApplication, colWave, colTags,
	colCPUs, colMemoryMiB, colTarget, colBootMode, colDisposition, colRightSizing,
	colBandwidth, colReplicationServer,
}

// exportOnlyColumns are written by export and ignored by import.
var exportOnlyColumns = []string{
	"lifecycle_state", "replication_state", "total_bytes", "replicated_bytes",
	"backlogged_bytes", "lag_seconds", "last_snapshot_at", "last_seen_at",
}

// Import limits.
const (
	MaxImportBytes = 8 << 20
	MaxImportRows  = 20000
)

// importRow is one parsed data row. Pointer fields are nil when the cell
// was empty: the value is left as it is.
type importRow struct {
	row         int // 1-based, header is row 1
	serverID    string
	hostname    string
	application string
	wave        string
	tags        map[string]string // nil: unchanged

	cpus, memoryMiB                         *int
	target, bootMode, disposition, rightSiz *string
	bandwidth                               *int64
	replicationServer                       *string
}

// importFile is a parsed import CSV.
type importFile struct {
	rows    []importRow
	ignored []string
}

// errorList collects import errors up to api.MaxImportErrors, counting
// the rest.
type errorList struct {
	items []api.FieldError
	count int
}

func (l *errorList) add(row int, col, format string, args ...any) {
	l.count++
	if len(l.items) < api.MaxImportErrors {
		l.items = append(l.items, api.FieldError{Row: row, Column: col, Message: fmt.Sprintf(format, args...)})
	}
}

// parseImportCSV parses and checks an import file on its own, without the
// inventory: encoding, header, cell syntax and values, duplicate rows. It
// reports every problem it finds, not just the first.
func parseImportCSV(data []byte) (*importFile, *errorList) {
	errs := &errorList{}
	f := &importFile{}
	switch {
	case len(data) > MaxImportBytes:
		errs.add(0, "", "file is larger than %d bytes; split it", MaxImportBytes)
		return f, errs
	case bytes.HasPrefix(data, []byte{0xFF, 0xFE}) || bytes.HasPrefix(data, []byte{0xFE, 0xFF}):
		errs.add(0, "", "file is UTF-16; save it as CSV UTF-8")
		return f, errs
	case bytes.IndexByte(data, 0) >= 0:
		errs.add(0, "", "file contains NUL bytes (UTF-16 or binary?); save it as CSV UTF-8")
		return f, errs
	}
	data = bytes.TrimPrefix(data, []byte("\xEF\xBB\xBF"))
	if !utf8.Valid(data) {
		line := 1 + bytes.Count(data[:firstInvalidUTF8(data)], []byte("\n"))
		errs.add(0, "", "line %d is not valid UTF-8 (Latin-1 or Windows-1252?); save the file as CSV UTF-8", line)
		return f, errs
	}
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		errs.add(0, "", "file is empty; the first row must name the columns, e.g. %s,%s,%s", colHostname, colApplication, colWave)
		return f, errs
	}
	if err != nil {
		errs.add(1, "", "header: %v", csvMessage(err))
		return f, errs
	}
	cols := make([]string, len(header))
	seen := map[string]bool{}
	known := map[string]bool{}
	for _, c := range importColumns {
		known[c] = true
	}
	ignore := map[string]bool{}
	for _, c := range exportOnlyColumns {
		ignore[c] = true
	}
	for i, h := range header {
		c := strings.ToLower(strings.TrimSpace(h))
		cols[i] = c
		switch {
		case c == "":
			errs.add(1, "", "column %d has no name", i+1)
		case seen[c]:
			errs.add(1, c, "column appears twice")
		case ignore[c]:
			f.ignored = append(f.ignored, c)
		case !known[c]:
			errs.add(1, c, "unknown column; known columns: %s", strings.Join(importColumns, ", "))
		}
		seen[c] = true
	}
	if !seen[colServerID] && !seen[colHostname] {
		errs.add(1, "", "no %s or %s column: one of them says which server a row is about", colServerID, colHostname)
	}
	if errs.count > 0 {
		return f, errs
	}
	byID, byHost := map[string]int{}, map[string]int{}
	for row := 2; ; row++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs.add(row, "", "%s", csvMessage(err))
			var pe *csv.ParseError
			if errors.As(err, &pe) && !errors.Is(pe.Err, csv.ErrFieldCount) {
				// The reader cannot resynchronise after a quoting error.
				break
			}
			continue
		}
		if row-1 > MaxImportRows {
			errs.add(row, "", "more than %d rows; split the file", MaxImportRows)
			break
		}
		if len(rec) != len(cols) {
			errs.add(row, "", "has %d cells, the header has %d", len(rec), len(cols))
			continue
		}
		ir := parseImportRow(row, cols, rec, errs)
		if ir.serverID == "" && ir.hostname == "" {
			errs.add(row, "", "neither %s nor %s is set", colServerID, colHostname)
		}
		if ir.serverID != "" {
			if prev, dup := byID[ir.serverID]; dup {
				errs.add(row, colServerID, "server %s is also on row %d", ir.serverID, prev)
			}
			byID[ir.serverID] = row
		}
		if ir.hostname != "" {
			k := strings.ToLower(ir.hostname)
			if prev, dup := byHost[k]; dup {
				errs.add(row, colHostname, "hostname %s is also on row %d", ir.hostname, prev)
			}
			byHost[k] = row
		}
		f.rows = append(f.rows, ir)
	}
	if errs.count == 0 && len(f.rows) == 0 {
		errs.add(0, "", "file has a header but no rows")
	}
	return f, errs
}

func firstInvalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(b)
}

// csvMessage shortens encoding/csv's errors, whose line numbers count
// file lines rather than rows.
func csvMessage(err error) string {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%v (line %d, column %d)", pe.Err, pe.Line, pe.Column)
	}
	return err.Error()
}

func parseImportRow(row int, cols, rec []string, errs *errorList) importRow {
	ir := importRow{row: row}
	for i, c := range cols {
		v := unescapeCell(strings.TrimSpace(rec[i]))
		if v == "" {
			continue
		}
		fail := func(format string, args ...any) { errs.add(row, c, format, args...) }
		text := func(max int) bool {
			if err := checkText(c, v, max); err != nil {
				fail("%s", strings.TrimPrefix(err.(*api.Error).Message, c+" "))
				return false
			}
			return true
		}
		str := func(p **string) {
			if text(maxNameLen) {
				*p = &v
			}
		}
		integer := func(min, max int64) (int64, bool) {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < min || n > max {
				fail("%q: want a whole number from %d to %d", v, min, max)
				return 0, false
			}
			return n, true
		}
		enum := func(p **string, allowed ...string) {
			u := strings.ToUpper(v)
			for _, a := range allowed {
				if u == a {
					*p = &u
					return
				}
			}
			fail("%q: want one of %s", v, strings.Join(allowed, ", "))
		}
		switch c {
		case colServerID:
			if text(maxNameLen) {
				ir.serverID = v
			}
		case colHostname:
			if text(maxNameLen) {
				ir.hostname = v
			}
		case colApplication:
			if text(maxNameLen) {
				ir.application = v
			}
		case colWave:
			if text(maxNameLen) {
				ir.wave = v
			}
		case colTags:
			tags, err := parseTags(v)
			if err != nil {
				fail("%v", err)
			} else {
				ir.tags = tags
			}
		case colCPUs:
			if n, ok := integer(1, 256); ok {
				k := int(n)
				ir.cpus = &k
			}
		case colMemoryMiB:
			if n, ok := integer(64, 4<<20); ok {
				k := int(n)
				ir.memoryMiB = &k
			}
		case colTarget:
			str(&ir.target)
		case colBootMode:
			enum(&ir.bootMode, string(ferry.BootLegacyBIOS), string(ferry.BootUEFI), string(ferry.BootUseSource))
		case colDisposition:
			enum(&ir.disposition, string(ferry.DispositionStarted), string(ferry.DispositionStopped))
		case colRightSizing:
			enum(&ir.rightSiz, string(ferry.RightSizingNone), string(ferry.RightSizingBasic))
		case colBandwidth:
			if n, ok := integer(0, 1<<40); ok {
				ir.bandwidth = &n
			}
		case colReplicationServer:
			str(&ir.replicationServer)
		}
	}
	return ir
}

// parseTags reads k=v;k=v. A value may contain '=', not ';'.
func parseTags(v string) (map[string]string, error) {
	tags := map[string]string{}
	for _, p := range strings.Split(v, ";") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		k, val, ok := strings.Cut(p, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q: want key=value pairs separated by ';'", p)
		}
		if _, dup := tags[k]; dup {
			return nil, fmt.Errorf("tag %q appears twice", k)
		}
		tags[k] = strings.TrimSpace(val)
	}
	if err := checkTags(tags); err != nil {
		return nil, errors.New(err.(*api.Error).Message)
	}
	return tags, nil
}

func formatTags(tags map[string]string) string {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(k + "=" + tags[k])
	}
	return b.String()
}

// escapeCell defuses spreadsheet formulas: a cell that a spreadsheet would
// evaluate (starting with = + - @, tab or CR) gets a leading apostrophe,
// which unescapeCell removes on import, so exports round-trip.
func escapeCell(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r'", rune(v[0])) {
		return "'" + v
	}
	return v
}

func unescapeCell(v string) string {
	if len(v) > 1 && v[0] == '\'' && strings.ContainsRune("=+-@\t\r'", rune(v[1])) {
		return v[1:]
	}
	return v
}

// writeInventoryCSV writes servers as an inventory CSV: the import columns
// then the export-only ones. appNames and waveNames map ids to names.
func writeInventoryCSV(w io.Writer, servers []*ferry.SourceServer, appNames, waveNames map[string]string) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(append(append([]string(nil), importColumns...), exportOnlyColumns...)); err != nil {
		return fmt.Errorf("write csv header: %w", err)
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, s := range servers {
		var replicated, backlogged int64
		for _, d := range s.Disks {
			replicated += d.ReplicatedBytes
			backlogged += d.BackloggedBytes
		}
		l, r := s.LaunchSetup, s.ReplicationSetup
		rec := []string{
			s.ID, s.Hostname, appNames[s.ApplicationID], waveNames[s.WaveID], formatTags(s.Tags),
			strconv.Itoa(l.CPUs), strconv.Itoa(l.MemoryMiB), l.Target, string(l.BootMode),
			string(l.Disposition), string(l.RightSizing),
			strconv.FormatInt(r.BandwidthBytesPerSec, 10), r.ReplicationServer,
			string(s.Lifecycle), string(s.Replication.State), strconv.FormatInt(s.TotalBytes(), 10),
			strconv.FormatInt(replicated, 10), strconv.FormatInt(backlogged, 10),
			strconv.FormatFloat(s.Replication.LagSeconds, 'f', -1, 64),
			ts(s.Replication.LastSnapshotAt), ts(s.LastSeenAt),
		}
		for i := range rec {
			rec[i] = escapeCell(rec[i])
		}
		if err := cw.Write(rec); err != nil {
			return fmt.Errorf("write csv row for %s: %w", s.ID, err)
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("write csv: %w", err)
	}
	return nil
}
