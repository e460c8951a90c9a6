package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// Group kinds: the API path of applications and waves.
const (
	KindApplications = "applications"
	KindWaves        = "waves"
)

// groupStatus is an application or a wave with its summary; both share
// these fields on the wire.
type groupStatus struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Description string            `json:"description,omitempty"`
	WaveID      string            `json:"wave_id,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	Archived    bool              `json:"archived"`
	Summary     api.GroupSummary  `json:"summary"`
}

func checkKind(kind string) error {
	if kind != KindApplications && kind != KindWaves {
		return fmt.Errorf("unknown group kind %q", kind)
	}
	return nil
}

func lifecycleCounts(m map[ferry.LifecycleState]int) string {
	parts := make([]string, 0, len(m))
	for _, l := range ferry.LifecycleStates {
		if n := m[l]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", l, n))
		}
	}
	return orDash(strings.Join(parts, ", "))
}

// RunGroupsList lists every application or wave (kind) with its health
// and progress.
func RunGroupsList(ctx context.Context, kind, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	if err := checkKind(kind); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	var all []groupStatus
	q := url.Values{"limit": {strconv.Itoa(ferry.MaxPageSize)}}
	for {
		var page api.List[groupStatus]
		if err := cl.Do(ctx, http.MethodGet, "/"+kind, q, nil, &page); err != nil {
			return err
		}
		all = append(all, page.Items...)
		if page.NextToken == "" {
			break
		}
		q.Set("next_token", page.NextToken)
	}
	if format != FormatTable {
		if all == nil {
			all = []groupStatus{}
		}
		return writeData(out, format, all)
	}
	header := []string{"ID", "NAME", "HEALTH", "PROGRESS", "SERVERS", "BY LIFECYCLE"}
	if kind == KindApplications {
		header = append(header, "WAVE")
	}
	rows := make([][]string, 0, len(all))
	for _, g := range all {
		r := []string{g.ID, g.Name, string(g.Summary.Health), string(g.Summary.Progress), strconv.Itoa(g.Summary.Servers), lifecycleCounts(g.Summary.Lifecycle)}
		if kind == KindApplications {
			r = append(r, orDash(g.WaveID))
		}
		rows = append(rows, r)
	}
	return table(out, header, rows)
}

// GroupCreateOptions are the flags of `ferry applications create` and
// `ferry waves create`.
type GroupCreateOptions struct {
	Name, Description, Wave string
	Tags                    []string
	Output                  string
}

// RunGroupsCreate creates an application or a wave.
func RunGroupsCreate(ctx context.Context, kind string, o GroupCreateOptions, out io.Writer) error {
	if err := CheckFormat(o.Output); err != nil {
		return err
	}
	if err := checkKind(kind); err != nil {
		return err
	}
	if o.Name == "" {
		return errors.New("--name is required")
	}
	req := api.GroupRequest{Name: &o.Name}
	if o.Description != "" {
		req.Description = &o.Description
	}
	if o.Wave != "" {
		if kind != KindApplications {
			return errors.New("--wave is for applications")
		}
		req.WaveID = &o.Wave
	}
	if len(o.Tags) > 0 {
		tags, err := parseTagFlags(o.Tags)
		if err != nil {
			return err
		}
		req.Tags = &tags
	}
	cl, err := client()
	if err != nil {
		return err
	}
	var g groupStatus
	if err := cl.Do(ctx, http.MethodPost, "/"+kind, nil, req, &g); err != nil {
		return err
	}
	if o.Output != FormatTable {
		// The create answer is the bare object; the summary comes with GET.
		if err := cl.Do(ctx, http.MethodGet, "/"+kind+"/"+url.PathEscape(g.ID), nil, nil, &g); err != nil {
			return err
		}
		return writeData(out, o.Output, g)
	}
	fmt.Fprintf(out, "Created %s %s (%s)\n", strings.TrimSuffix(kind, "s"), g.ID, g.Name)
	return nil
}

func parseTagFlags(ts []string) (map[string]string, error) {
	tags := map[string]string{}
	for _, t := range ts {
		k, v, ok := strings.Cut(t, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--tag %q: want key=value", t)
		}
		tags[k] = v
	}
	return tags, nil
}

// RunGroupsShow prints one application or wave with its summary.
func RunGroupsShow(ctx context.Context, kind, id, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	if err := checkKind(kind); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	var g groupStatus
	if err := cl.Do(ctx, http.MethodGet, "/"+kind+"/"+url.PathEscape(id), nil, nil, &g); err != nil {
		return err
	}
	if format != FormatTable {
		return writeData(out, format, g)
	}
	tags := make([]string, 0, len(g.Tags))
	for k, v := range g.Tags {
		tags = append(tags, k+"="+v)
	}
	sort.Strings(tags)
	kv := [][]string{
		{"ID", g.ID}, {"Name", g.Name}, {"Description", orDash(g.Description)},
		{"Health", string(g.Summary.Health)}, {"Progress", string(g.Summary.Progress)},
		{"Servers", strconv.Itoa(g.Summary.Servers)},
		{"With errors", strconv.Itoa(g.Summary.ErrorServers)}, {"Lagging", strconv.Itoa(g.Summary.LaggingServers)},
		{"By lifecycle", lifecycleCounts(g.Summary.Lifecycle)},
		{"Tags", orDash(strings.Join(tags, ", "))}, {"Archived", strconv.FormatBool(g.Archived)},
	}
	if kind == KindApplications {
		kv = append(kv, []string{"Wave", orDash(g.WaveID)})
	}
	return table(out, []string{"FIELD", "VALUE"}, kv)
}

// RunGroupsDelete deletes an application or a wave that has no members.
func RunGroupsDelete(ctx context.Context, kind, id string, out io.Writer) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	if err := cl.Do(ctx, http.MethodDelete, "/"+kind+"/"+url.PathEscape(id), nil, nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(out, "Deleted %s %s\n", strings.TrimSuffix(kind, "s"), id)
	return nil
}

// ImportOptions are the flags of `ferry import`.
type ImportOptions struct {
	File   string
	DryRun bool
	Output string
	// Progress receives the upload's progress (standard error): a bar on
	// a terminal, plain lines otherwise; nil shows none.
	Progress io.Writer
}

// RunImport sends an inventory CSV. When the file has problems it prints
// every one (row, column, what to fix) and returns an error: nothing was
// changed.
func RunImport(ctx context.Context, o ImportOptions, out io.Writer) error {
	if err := CheckFormat(o.Output); err != nil {
		return err
	}
	f, err := os.Open(o.File)
	if err != nil {
		return fmt.Errorf("open import file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("open import file: %w", err)
	}
	cl, err := client()
	if err != nil {
		return err
	}
	var body io.Reader = f
	var p *Progress
	if o.Progress != nil {
		p = NewProgress(o.Progress)
		size := st.Size()
		label := fmt.Sprintf("uploading %s (%s)", filepath.Base(o.File), bytesIEC(size))
		p.Update(0, label)
		sent := false
		body = &countingReader{r: f, onRead: func(n int64) {
			// The last read (EOF) repeats the total; the upload is over
			// once the whole file is read.
			if sent {
				return
			}
			if size > 0 {
				p.Update(float64(n)/float64(size), label)
			}
			if n >= size {
				sent = true
				p.Update(-1, "the server checks every row of "+filepath.Base(o.File)+"…")
			}
		}}
	}
	task, err := cl.Import(ctx, body, o.DryRun)
	if p != nil {
		p.Done("")
	}
	var ae *api.Error
	if errors.As(err, &ae) && len(ae.Errors) > 0 {
		if o.Output != FormatTable {
			_ = writeData(out, o.Output, ae)
		} else {
			rows := make([][]string, 0, len(ae.Errors))
			for _, e := range ae.Errors {
				row := "-"
				if e.Row > 0 {
					row = strconv.Itoa(e.Row)
				}
				rows = append(rows, []string{row, orDash(e.Column), e.Message})
			}
			_ = table(out, []string{"ROW", "COLUMN", "PROBLEM"}, rows)
		}
		return fmt.Errorf("%s: %d problems; nothing was imported. Fix them and run 'ferry import %s' again (add --dry-run to check only)", o.File, len(ae.Errors), o.File)
	}
	if err != nil {
		return err
	}
	if o.Output != FormatTable {
		return writeData(out, o.Output, task)
	}
	verb := "Imported"
	if task.DryRun {
		verb = "Checked (dry run, nothing changed)"
	}
	fmt.Fprintf(out, "%s %s: %d rows; created %d applications and %d waves; modified %d servers, %d unchanged (task %s)\n",
		verb, o.File, task.Rows, task.CreatedApplications, task.CreatedWaves, task.ModifiedServers, task.UnchangedServers, task.ID)
	if len(task.IgnoredColumns) > 0 {
		fmt.Fprintf(out, "Read past export-only columns: %s\n", strings.Join(task.IgnoredColumns, ", "))
	}
	return nil
}

// RunImportsList lists recent import tasks.
func RunImportsList(ctx context.Context, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	var l api.List[api.ImportTask]
	if err := cl.Do(ctx, http.MethodGet, "/imports", nil, nil, &l); err != nil {
		return err
	}
	if format != FormatTable {
		return writeData(out, format, l.Items)
	}
	rows := make([][]string, 0, len(l.Items))
	for _, t := range l.Items {
		rows = append(rows, []string{t.ID, when(t.Time), t.Status, strconv.Itoa(t.Rows),
			strconv.Itoa(t.CreatedApplications + t.CreatedWaves), strconv.Itoa(t.ModifiedServers), strconv.Itoa(t.ErrorCount), t.Actor})
	}
	return table(out, []string{"ID", "TIME", "STATUS", "ROWS", "CREATED", "MODIFIED", "ERRORS", "BY"}, rows)
}

// InventoryExportOptions are the options of `ferry export`.
type InventoryExportOptions struct {
	// Progress receives the download's progress (standard error): rows
	// and bytes so far on a terminal, one summary line otherwise; nil
	// shows none.
	Progress io.Writer
}

// RunExport writes the inventory CSV to out.
func RunExport(ctx context.Context, o InventoryExportOptions, out io.Writer) error {
	cl, err := client()
	if err != nil {
		return err
	}
	if o.Progress == nil {
		return cl.Export(ctx, out)
	}
	p := NewProgress(o.Progress)
	// The server streams the file and does not know its size up front, so
	// this counts: rows (the header is one) and bytes.
	cw := &csvCounter{w: out}
	summary := func() string {
		return fmt.Sprintf("exported %d servers (%s)", max(cw.records-1, 0), bytesIEC(cw.bytes))
	}
	cw.onWrite = func() {
		if p.Live() {
			p.Update(-1, "exporting: "+summary()[len("exported "):])
		}
	}
	if err := cl.Export(ctx, cw); err != nil {
		p.Done("")
		return err
	}
	p.Done(summary())
	return nil
}

// GroupLaunchOptions are the flags of `ferry waves test|cutover` and
// `ferry applications test|cutover`.
type GroupLaunchOptions struct {
	Kind      string // test or cutover
	UseLatest bool
	SkipDrain bool
	Output    string
}

// RunGroupsLaunch starts one test launch or cutover job per member server
// of an application or a wave (kind) and lists each server's job, or why
// it got none. It fails when no job started.
func RunGroupsLaunch(ctx context.Context, kind, id string, o GroupLaunchOptions, out io.Writer) error {
	if err := CheckFormat(o.Output); err != nil {
		return err
	}
	if err := checkKind(kind); err != nil {
		return err
	}
	action := map[string]string{"test": "start-test", "cutover": "start-cutover"}[o.Kind]
	if action == "" {
		return fmt.Errorf("launch kind %q: want test or cutover", o.Kind)
	}
	cl, err := client()
	if err != nil {
		return err
	}
	var res api.BulkJobResult
	req := api.BulkJobRequest{UseLatestSnapshot: o.UseLatest, SkipDrain: o.SkipDrain}
	if err := cl.Do(ctx, http.MethodPost, "/"+kind+"/"+url.PathEscape(id)+"/"+action, nil, req, &res); err != nil {
		return err
	}
	if o.Output != FormatTable {
		if err := writeData(out, o.Output, res); err != nil {
			return err
		}
	} else {
		rows := make([][]string, 0, len(res.Started)+len(res.NotStarted))
		for _, s := range res.Started {
			rows = append(rows, []string{s.SourceServerID, s.JobID, "started"})
		}
		for _, s := range res.NotStarted {
			rows = append(rows, []string{s.SourceServerID, "-", "not started: " + s.Reason})
		}
		if err := table(out, []string{"SERVER", "JOB", "RESULT"}, rows); err != nil {
			return err
		}
	}
	if len(res.Started) == 0 && len(res.NotStarted) == 0 {
		return fmt.Errorf("%s %s has no live servers; add some with 'ferry import' or the API first", strings.TrimSuffix(kind, "s"), id)
	}
	if len(res.Started) == 0 {
		return fmt.Errorf("no job started for %s %s (reasons above); fix them, then run the command again", strings.TrimSuffix(kind, "s"), id)
	}
	if o.Output == FormatTable {
		fmt.Fprintf(out, "Started %d job(s); follow one with: ferry jobs wait JOB_ID\n", len(res.Started))
	}
	return nil
}
