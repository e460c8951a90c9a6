package cli

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/api"
)

// LaunchOptions are the flags of `ferry launch test|cutover|terminate`.
type LaunchOptions struct {
	Kind      string // test, cutover or terminate
	ServerIDs []string
	UseLatest bool
	SkipDrain bool
	// Template launches with this template's launch settings.
	Template string
	// Snapshots are --snapshot values: ID (the only disk's) or DISK=ID.
	Snapshots []string
	// At is --at: a time (RFC 3339) or a duration ago ("15m").
	At     string
	Wait   bool
	Output string
}

// launchPoint turns --snapshot and --at into the request's choice.
func launchPoint(o LaunchOptions, now time.Time) (map[string]string, time.Time, error) {
	var at time.Time
	if o.At != "" {
		if d, err := time.ParseDuration(o.At); err == nil {
			if d < 0 {
				return nil, at, fmt.Errorf("--at %s: give a duration ago without a sign, or a time", o.At)
			}
			at = now.Add(-d)
		} else if at, err = time.Parse(time.RFC3339, o.At); err != nil {
			return nil, at, fmt.Errorf("--at %q: want a time like 2026-11-25T10:00:00Z or a duration ago like 15m", o.At)
		}
	}
	var snaps map[string]string
	for _, v := range o.Snapshots {
		disk, id, ok := strings.Cut(v, "=")
		if !ok {
			disk, id = "", v
		}
		if id == "" {
			return nil, at, fmt.Errorf("--snapshot %q: want ID or DISK=ID", v)
		}
		if snaps == nil {
			snaps = map[string]string{}
		}
		if _, dup := snaps[disk]; dup {
			return nil, at, fmt.Errorf("--snapshot: disk %q named twice", disk)
		}
		snaps[disk] = id
	}
	return snaps, at, nil
}

// RunLaunch starts a job and, with Wait, follows it to the end.
func RunLaunch(ctx context.Context, o LaunchOptions, out io.Writer) error {
	if err := CheckFormat(o.Output); err != nil {
		return err
	}
	path := map[string]string{"test": "/jobs/start-test", "cutover": "/jobs/start-cutover", "terminate": "/jobs/terminate"}[o.Kind]
	if path == "" {
		return fmt.Errorf("launch kind %q: want test, cutover or terminate", o.Kind)
	}
	cl, err := client()
	if err != nil {
		return err
	}
	var job ferry.Job
	snaps, at, err := launchPoint(o, time.Now())
	if err != nil {
		return err
	}
	req := api.StartJobRequest{SourceServerIDs: o.ServerIDs, UseLatestSnapshot: o.UseLatest, SkipDrain: o.SkipDrain, LaunchTemplateID: o.Template,
		Snapshots: snaps, PointInTime: at}
	if err := cl.Do(ctx, "POST", path, nil, req, &job); err != nil {
		return err
	}
	if !o.Wait {
		if o.Output != FormatTable {
			return writeData(out, o.Output, job)
		}
		fmt.Fprintf(out, "Started job %s (%s, %s); follow it with: ferry jobs wait %s\n", job.ID, job.Type, job.InitiatedBy, job.ID)
		return nil
	}
	return waitJob(ctx, cl, job.ID, o.Output, out)
}

// RunJobsWait follows a job, printing its log as it grows, until it ends.
// It fails when any server's launch failed.
func RunJobsWait(ctx context.Context, id, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	return waitJob(ctx, cl, id, format, out)
}

func waitJob(ctx context.Context, cl *api.Client, id, format string, out io.Writer) error {
	seen := 0
	start := time.Now()
	// The log and a bar go to out only with table output: JSON and YAML
	// are data, printed once at the end.
	var p *Progress
	if format == FormatTable {
		p = NewProgress(out)
	}
	for {
		var j api.JobWithLog
		if err := cl.Do(ctx, "GET", "/jobs/"+url.PathEscape(id), nil, nil, &j); err != nil {
			if p != nil {
				p.Done("")
			}
			return err
		}
		if p != nil {
			for _, l := range j.Log[seen:] {
				srv := ""
				if l.SourceServerID != "" {
					srv = " " + l.SourceServerID
				}
				p.Println(fmt.Sprintf("%6.1fs  %-26s%s  %s", time.Since(start).Seconds(), l.Event, srv, l.Message))
			}
			seen = len(j.Log)
			frac, label := jobProgress(&j)
			p.Update(frac, label)
		}
		if j.Status == ferry.JobCompleted {
			if p != nil {
				p.Done("")
			}
			if format != FormatTable {
				if err := writeData(out, format, j); err != nil {
					return err
				}
			}
			var failed []string
			for _, s := range j.Servers {
				if s.LaunchStatus == ferry.LaunchFailed {
					failed = append(failed, s.SourceServerID)
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("job %s: failed for %s (the log above says why)", id, strings.Join(failed, ", "))
			}
			if format == FormatTable {
				fmt.Fprintf(out, "Job %s completed in %.1fs\n", id, time.Since(start).Seconds())
			}
			return nil
		}
		select {
		case <-ctx.Done():
			if p != nil {
				p.Done("")
			}
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// jobSteps ranks the log events a server passes through in a job, out of
// jobStepsTotal: a launch snapshots, launches (converting on the way) and
// runs its post-launch actions; a terminate cleans up.
var jobSteps = map[ferry.JobEvent]int{
	ferry.EventSnapshotStart: 1, ferry.EventSnapshotEnd: 2, ferry.EventUsingPreviousSnapshot: 2,
	ferry.EventLaunchStart: 3, ferry.EventConversionStart: 4, ferry.EventConversionEnd: 5,
	ferry.EventPostLaunchStart: 6, ferry.EventPostLaunchEnd: 7,
	ferry.EventCleanupStart: 4,
}

const jobStepsTotal = 8

// jobEnds are the events after which a server has nothing left to do in
// the job.
var jobEnds = map[ferry.JobEvent]bool{
	ferry.EventSnapshotFail: true, ferry.EventLaunchFailed: true, ferry.EventConversionFail: true,
	ferry.EventCleanupEnd: true, ferry.EventCleanupFail: true, ferry.EventJobCancel: true,
}

// jobProgress says how far a job is (0–1, the mean of its servers' steps)
// and how many of its servers are done.
func jobProgress(j *api.JobWithLog) (float64, string) {
	step := map[string]int{}
	for _, l := range j.Log {
		if l.SourceServerID == "" {
			continue
		}
		switch {
		case jobEnds[l.Event]:
			step[l.SourceServerID] = jobStepsTotal
		case jobSteps[l.Event] > step[l.SourceServerID]:
			step[l.SourceServerID] = jobSteps[l.Event]
		}
	}
	n := len(j.Servers)
	var sum float64
	done := 0
	for _, s := range j.Servers {
		k := step[s.SourceServerID]
		if j.Status == ferry.JobCompleted || s.LaunchStatus == ferry.LaunchFailed || s.LaunchStatus == ferry.LaunchTerminated {
			k = jobStepsTotal
		}
		if k == jobStepsTotal {
			done++
		}
		sum += float64(k) / jobStepsTotal
	}
	frac := 0.0
	if n > 0 {
		frac = sum / float64(n)
	}
	if j.Status == ferry.JobCompleted {
		frac = 1
	}
	// The log lines say what happens; the label only counts, so plain
	// output gets a new line when a server finishes or a tenth passes.
	return frac, fmt.Sprintf("job %s %s: %d/%d servers done", j.ID, j.Status, done, n)
}

// RunJobsList lists jobs, newest first.
func RunJobsList(ctx context.Context, serverID, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	q := url.Values{}
	if serverID != "" {
		q.Set("source_server_id", serverID)
	}
	var l api.List[ferry.Job]
	if err := cl.Do(ctx, "GET", "/jobs", q, nil, &l); err != nil {
		return err
	}
	if format != FormatTable {
		return writeData(out, format, l.Items)
	}
	rows := make([][]string, 0, len(l.Items))
	for _, j := range l.Items {
		var st []string
		for _, s := range j.Servers {
			st = append(st, s.SourceServerID+":"+string(s.LaunchStatus))
		}
		rows = append(rows, []string{j.ID, string(j.Type), string(j.InitiatedBy), string(j.Status), when(j.CreatedAt), when(j.EndedAt), strings.Join(st, " ")})
	}
	return table(out, []string{"ID", "TYPE", "INITIATED BY", "STATUS", "CREATED", "ENDED", "SERVERS"}, rows)
}

// RunJobsShow prints a job and its log.
func RunJobsShow(ctx context.Context, id, format string, out io.Writer) error {
	if err := CheckFormat(format); err != nil {
		return err
	}
	cl, err := client()
	if err != nil {
		return err
	}
	var j api.JobWithLog
	if err := cl.Do(ctx, "GET", "/jobs/"+url.PathEscape(id), nil, nil, &j); err != nil {
		return err
	}
	if format != FormatTable {
		return writeData(out, format, j)
	}
	fmt.Fprintf(out, "Job %s: %s initiated by %s, %s, created %s, ended %s\n", j.ID, j.Type, j.InitiatedBy, j.Status, when(j.CreatedAt), when(j.EndedAt))
	for _, s := range j.Servers {
		fmt.Fprintf(out, "  %s: %s %s\n", s.SourceServerID, s.LaunchStatus, s.InstanceID)
	}
	rows := make([][]string, 0, len(j.Log))
	for _, l := range j.Log {
		rows = append(rows, []string{when(l.Time), string(l.Event), orDash(l.SourceServerID), l.Message})
	}
	return table(out, []string{"TIME", "EVENT", "SERVER", "MESSAGE"}, rows)
}
