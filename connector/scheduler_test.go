package connector

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
	"github.com/ferrymigrate/ferry/dataplane"
)

func newDisk(t *testing.T, path string, size int64) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, fmt.Sprint(size)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
}

// A VM's replication job end to end against real QEMU and a real server:
// registered DISCOVERED with its facts; a recurring job whose first run
// time lies in the past (MISSED slots), then scheduled runs that send only
// what changed and leave a snapshot equal to the disk; keep-N snapshots;
// stop; a FLUSH (drained snapshot, as a test launch asks) that gets a run
// at once although the job is stopped; failures up to PAUSED_ON_FAILURE;
// start; delete (bitmaps removed); a run-once job after it (RESCAN, no
// full copy) that COMPLETES.
func TestSchedulerRunsJobs(t *testing.T) {
	requireQEMU(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	const size = 32 << 20
	newDisk(t, disk, size)
	v := startVM(t, dir, disk)
	v.write(t, 0, 4<<20)

	ls := startServer(t, filepath.Join(dir, "server"))
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	state := filepath.Join(dir, "connector")
	src, err := Open(ctx, Options{ServerURL: "https://" + ls.s.APIAddr, InstallToken: ls.token, CAFingerprint: ls.s.CAFingerprint(),
		StateDir: state, Logger: log}, "unix:"+v.qmpSock)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	srv, err := ls.s.Store().Server(ctx, src.ServerID)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Lifecycle != ferry.LifecycleDiscovered || srv.Hostname != "conn-test" || srv.CPUs != 2 || srv.RAMBytes != 64<<20 ||
		len(srv.Disks) != 1 || srv.Disks[0].SizeBytes != size || len(srv.NICs) != 1 || srv.NICs[0].MAC != "52:54:00:12:34:56" {
		t.Fatalf("registered source server: lifecycle %s hostname %q cpus %d ram %d disks %+v nics %+v", srv.Lifecycle, srv.Hostname, srv.CPUs, srv.RAMBytes, srv.Disks, srv.NICs)
	}

	sched := &Scheduler{StateDir: state, Poll: 50 * time.Millisecond}
	if err := sched.Register(src); err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- sched.Serve(sctx, src, nil) }()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()
	book := sched.Book()
	// No job: nothing runs, the VM stays in the catalog.
	time.Sleep(300 * time.Millisecond)
	if s, _ := ls.s.Store().Server(ctx, src.ServerID); s.Lifecycle != ferry.LifecycleDiscovered {
		t.Fatalf("without a job the server moved to %s", s.Lifecycle)
	}
	id := dataplane.DiskID(src.ServerID, "disk0")
	const freq = 4 * time.Second
	job := func() *Job {
		t.Helper()
		j, err := book.Job(src.ServerID)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	// waitRuns waits until the job has a finished run past the first n
	// records and returns the newest.
	completed := func(j *Job) int {
		n := 0
		for _, r := range j.Runs {
			if r.State == RunCompleted || r.State == RunFailed {
				n++
			}
		}
		return n
	}
	waitRun := func(what string, after int) RunRecord {
		t.Helper()
		var last RunRecord
		eventually(t, 20*time.Second, what, func() bool {
			j := job()
			if completed(j) <= after {
				return false
			}
			last = j.Runs[len(j.Runs)-1]
			return last.State == RunCompleted || last.State == RunFailed
		})
		return last
	}
	checkRun := func(name string, r RunRecord, mode Mode, sent int64, want string) {
		t.Helper()
		if r.State != RunCompleted {
			t.Fatalf("%s run: %s (%s)", name, r.State, r.Reason)
		}
		d := r.Result.Disks[0]
		t.Logf("%s run (%s): sent %d KiB raw, %d KiB on the wire", name, d.Mode, d.RawSentBytes>>10, d.SentBytes>>10)
		if d.Mode != mode || d.RawSentBytes != sent {
			t.Fatalf("%s run: mode %s sent %d bytes, want %s and %d", name, d.Mode, d.RawSentBytes, mode, sent)
		}
		if want == "" {
			want = v.diskSHA(t)
		}
		if got := snapshotSHA(t, ls.s.Replica(), id, d.SnapshotSeq); got != want {
			t.Fatalf("after the %s run the replica snapshot differs from the disk at the run's point in time", name)
		}
	}

	// The disk changes only right after a run, so the next scheduled run
	// (freq later) sees exactly that change; its expected content is
	// taken at once.
	sha0 := v.diskSHA(t)
	created := time.Now()
	if _, err := book.Create("conn-test", JobSpec{Frequency: freq, FirstRun: created.Add(-2*freq - 100*time.Millisecond), Keep: 2}, created); err != nil {
		t.Fatal(err)
	}
	first := waitRun("the first run", 0)
	v.write(t, 8<<20, 1<<20)
	sha1 := v.diskSHA(t)
	checkRun("first", first, ModeFull, 4<<20, sha0)
	j := job()
	if len(j.Runs) < 3 || j.Runs[0].State != RunMissed || j.Runs[1].State != RunMissed || j.Runs[0].Reason == "" || j.Runs[2].State != RunCompleted {
		t.Fatalf("after the first run: job %s, runs %+v", j.State, j.Runs)
	}
	if !j.NextRun.After(created) {
		t.Fatalf("next run %s is not after the first", j.NextRun)
	}
	eventually(t, 10*time.Second, "READY_FOR_TEST", func() bool {
		s, err := ls.s.Store().Server(ctx, src.ServerID)
		return err == nil && s.Lifecycle == ferry.LifecycleReadyForTest
	})

	second := waitRun("the second run", 1)
	v.write(t, 16<<20, 2<<20)
	sha2 := v.diskSHA(t)
	checkRun("second", second, ModeIncremental, 1<<20, sha1)
	if !second.ScheduledAt.Equal(first.ScheduledAt.Add(freq)) {
		t.Fatalf("second run scheduled at %s, want %s", second.ScheduledAt, first.ScheduledAt.Add(freq))
	}
	if j := job(); j.State != JobActive {
		t.Fatalf("recurring job after a run: %s", j.State)
	}
	third := waitRun("the third run", 2)
	if err := book.Stop(src.ServerID); err != nil {
		t.Fatal(err)
	}
	checkRun("third", third, ModeIncremental, 2<<20, sha2)
	d, err := ls.s.Replica().Disk(id)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "only the 2 newest snapshots kept", func() bool {
		snaps := d.Snapshots()
		seqs := []uint64{}
		for _, s := range snaps {
			seqs = append(seqs, s.Seq)
		}
		return len(snaps) == 2 && slices.Contains(seqs, third.Result.Disks[0].SnapshotSeq) && slices.Contains(seqs, second.Result.Disks[0].SnapshotSeq)
	})

	// Stopped: no scheduled runs.
	n := completed(job())
	time.Sleep(freq + freq/2)
	if j := job(); completed(j) != n || j.State != JobPending || !j.Stopped {
		t.Fatalf("stopped job: state %s stopped %v, %d runs after stop", j.State, j.Stopped, completed(j)-n)
	}
	n = completed(job())

	// A drained snapshot (what a test launch asks for) gets a run now.
	v.write(t, 24<<20, 512<<10)
	want := v.diskSHA(t)
	start := time.Now()
	snaps, err := ls.s.DataPlane().Snapshot(ctx, src.ServerID, true)
	if err != nil {
		t.Fatalf("drained snapshot of a connector server: %v", err)
	}
	t.Logf("drained snapshot (FLUSH answered by a run) in %.2fs", time.Since(start).Seconds())
	var seq uint64
	for _, s := range d.Snapshots() {
		if s.ID == snaps["disk0"] {
			seq = s.Seq
		}
	}
	if got := snapshotSHA(t, ls.s.Replica(), id, seq); got != want {
		t.Fatal("the drained snapshot lacks writes made before the FLUSH")
	}
	flushRun := waitRun("the FLUSH's run", n)
	if !strings.Contains(flushRun.Reason, "FLUSH") || len(flushRun.Result.Flushes) != 1 || flushRun.Result.Disks[0].RawSentBytes != 512<<10 {
		t.Fatalf("FLUSH run: %+v", flushRun)
	}
	if j := job(); j.State != JobPending || !j.Stopped {
		t.Fatalf("a FLUSH run changed a stopped job to %s", j.State)
	}
	n = completed(job())

	// Runs that fail: the work directory is a file.
	work := src.WorkDir
	if err := os.RemoveAll(work); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(work, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= MaxConsecutiveFailures; i++ {
		if err := book.Start(src.ServerID); err != nil {
			t.Fatal(err)
		}
		r := waitRun(fmt.Sprintf("failed run %d", i), n)
		n++
		if r.State != RunFailed || !strings.Contains(r.Reason, "started by the operator") || !strings.Contains(r.Reason, "not a directory") {
			t.Fatalf("run %d: %s %q", i, r.State, r.Reason)
		}
		// Stop between on-demand runs so no scheduled run interleaves.
		if err := book.Stop(src.ServerID); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]JobState{true: JobPausedOnFailure, false: JobPending}[i == MaxConsecutiveFailures]; job().State != want {
			t.Fatalf("after %d failures: job %s (%s), want %s", i, job().State, job().Reason, want)
		}
	}
	os.Remove(work)
	if err := book.Start(src.ServerID); err != nil {
		t.Fatal(err)
	}
	r := waitRun("the run after the failures", n)
	n++
	checkRun("resumed", r, ModeIncremental, 0, "")
	if j := job(); j.State != JobActive || j.Failures != 0 {
		t.Fatalf("after a good run: %s, %d failures", j.State, j.Failures)
	}

	// Delete: the VM's bitmaps go.
	if err := book.Delete(src.ServerID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the deleted job's bitmaps removed", func() bool {
		nodes, err := namedNodes(ctx, v.c)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range nodes["disk0"].Bitmaps {
			if strings.HasPrefix(b.Name, fleecePrefix) {
				return false
			}
		}
		return true
	})
	if j := job(); j.State != JobDeleted {
		t.Fatalf("deleted job: %s", j.State)
	}
	n = completed(job())
	v.write(t, 2<<20, 1<<20)
	if _, err := book.Create(src.ServerID, JobSpec{RunOnce: true}, time.Now()); err != nil {
		t.Fatal(err)
	}
	last := waitRun("the run-once job's run", 0)
	checkRun("run once after delete", last, ModeRescan, 1<<20, "")
	eventually(t, 5*time.Second, "COMPLETED", func() bool { return job().State == JobCompleted })
	_ = n
}

// Runs across VMs never exceed the concurrency bound: 4 VMs, bound 2.
func TestSchedulerBoundsConcurrency(t *testing.T) {
	requireQEMU(t)
	dir := t.TempDir()
	ls := startServer(t, filepath.Join(dir, "server"))
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	state := filepath.Join(dir, "connector")
	sched := &Scheduler{StateDir: state, Concurrency: 2, Poll: 50 * time.Millisecond}
	var mu sync.Mutex
	inFlight, peak := 0, 0
	runHook = func(d int) {
		mu.Lock()
		defer mu.Unlock()
		inFlight += d
		peak = max(peak, inFlight)
	}
	defer func() { runHook = nil }()
	var srcs []*Source
	for i := range 4 {
		vd := filepath.Join(dir, fmt.Sprintf("vm%d", i))
		os.MkdirAll(vd, 0o700)
		disk := filepath.Join(vd, "disk.qcow2")
		newDisk(t, disk, 32<<20)
		v := startNamedVM(t, vd, disk, fmt.Sprintf("vm%d", i), fmt.Sprintf("6a1e3c4e-0000-4000-8000-0000000000%02d", i))
		v.write(t, 0, 16<<20)
		src, err := Open(ctx, Options{ServerURL: "https://" + ls.s.APIAddr, InstallToken: ls.token, CAFingerprint: ls.s.CAFingerprint(),
			StateDir: state, Logger: log}, "unix:"+v.qmpSock)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		if err := sched.Register(src); err != nil {
			t.Fatal(err)
		}
		if _, err := sched.Book().Create(src.ServerID, JobSpec{RunOnce: true}, time.Now()); err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, src)
	}
	var wg sync.WaitGroup
	for _, src := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sched.Serve(ctx, src, Finished); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	jobs, err := sched.Book().List()
	if err != nil {
		t.Fatal(err)
	}
	type span struct{ start, end time.Time }
	var spans []span
	for _, j := range jobs {
		r := j.Runs[len(j.Runs)-1]
		if j.State != JobCompleted || r.State != RunCompleted || r.Result.SentBytes() == 0 {
			t.Fatalf("job %s: %s, run %s (%s)", j.VM, j.State, r.State, r.Reason)
		}
		// The Source's own timing lies inside the bound; the record's
		// Start and End are written just outside it.
		spans = append(spans, span{r.Result.Start, r.Result.End})
	}
	// From the records too: at no run's start were more than 2 running.
	for _, a := range spans {
		n := 0
		for _, b := range spans {
			if !b.start.After(a.start) && b.end.After(a.start) {
				n++
			}
		}
		if n > 2 {
			t.Fatalf("%d runs in flight at %s with a bound of 2", n, a.start)
		}
	}
	t.Logf("peak runs in flight: %d (bound 2, 4 VMs)", peak)
	if peak != 2 {
		t.Fatalf("peak runs in flight %d, want the bound, 2", peak)
	}
}
