package replica

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/replica/fs"
)

// The crash test re-executes the test binary as a child that writes to a
// store until the parent SIGKILLs it; the parent then reopens the store and
// checks every acknowledged write, every snapshot and Verify.

const (
	crashEnv       = "FERRY_REPLICA_CRASH_CHILD"
	crashDiskSize  = 2 << 20
	crashChunkSize = 64 << 10
	crashSeed      = 42
)

// crashOp is the deterministic operation with sequence number seq.
type crashOp struct {
	kind byte // recWrite, recZero or recBarrier
	off  int64
	data []byte // write data
	n    int64  // zero length
}

func crashOpFor(seq uint64) crashOp {
	rng := rand.New(rand.NewPCG(crashSeed, seq))
	if seq%13 == 0 {
		return crashOp{kind: recBarrier}
	}
	blocks := int64(crashDiskSize / 4096)
	off := rng.Int64N(blocks) * 4096
	n := min((1+rng.Int64N(24))*4096, crashDiskSize-off)
	if rng.IntN(4) == 0 {
		// Whole aligned chunks, as an initial sync sends: stored directly
		// as chunks and journalled as references (recChunks).
		chunks := int64(crashDiskSize / crashChunkSize)
		c := rng.Int64N(chunks)
		off, n = c*crashChunkSize, min(1+rng.Int64N(2), chunks-c)*crashChunkSize
	}
	if rng.IntN(10) == 0 {
		return crashOp{kind: recZero, off: off, n: n}
	}
	data := make([]byte, n)
	// Half random, half compressible, some repeated (deduplicated) blocks.
	switch rng.IntN(3) {
	case 0:
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
	case 1:
		for i := range data {
			data[i] = byte(rng.IntN(3))
		}
	default:
		for i := range data {
			data[i] = byte(i / 4096)
		}
	}
	return crashOp{kind: recWrite, off: off, data: data}
}

func (op crashOp) apply(b []byte) {
	switch op.kind {
	case recWrite:
		copy(b[op.off:], op.data)
	case recZero:
		clear(b[op.off : op.off+op.n])
	}
}

func crashOptions(dir string) (Options, error) {
	be, err := fs.Open(filepath.Join(dir, "backend"), fs.Packed(ChunkPrefix))
	if err != nil {
		return Options{}, err
	}
	keys, err := OpenKeyFile(filepath.Join(dir, "key"))
	if err != nil {
		return Options{}, err
	}
	return Options{
		Dir: filepath.Join(dir, "staging"), Backend: be, CloseBackend: true, Keys: keys,
		ChunkSize: crashChunkSize, SegmentSize: 128 << 10,
		Window:       Window{MaxBytes: 512 << 10, MaxAge: time.Hour},
		FoldInterval: 15 * time.Millisecond, FoldBytes: 256 << 10,
	}, nil
}

// crashChild writes until killed, printing "ack SEQ" once SEQ is durable.
func crashChild(dir string) {
	fail := func(err error) {
		fmt.Println("error", err)
		os.Exit(3)
	}
	ctx := context.Background()
	opts, err := crashOptions(dir)
	if err != nil {
		fail(err)
	}
	s, err := Open(ctx, opts)
	if err != nil {
		fail(err)
	}
	d, err := s.Disk("crash")
	if err != nil {
		if d, err = s.CreateDisk(ctx, "crash", crashDiskSize, 4096); err != nil {
			fail(err)
		}
	}
	start := d.DurableSeq()
	// A resumed stream repeats itself: old sequence numbers are ignored,
	// whatever they carry.
	for seq := start; seq > 0 && seq+3 > start; seq-- {
		if err := d.Write(ctx, seq, 0, bytes.Repeat([]byte{0xEE}, 4096)); err != nil {
			fail(err)
		}
	}
	fmt.Println("ready", start)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	acks := make(chan Commit, 16)
	seqs := make(chan uint64, 16)
	go func() {
		for c := range acks {
			seq := <-seqs
			if err := c.Wait(ctx); err != nil {
				fail(err)
			}
			fmt.Println("ack", seq)
		}
	}()
	for seq := start + 1; ; seq++ {
		op := crashOpFor(seq)
		var c Commit
		switch op.kind {
		case recWrite:
			c, err = d.Append(seq, op.off, op.data)
		case recZero:
			c, err = d.AppendZeroes(seq, op.off, op.n)
		case recBarrier:
			c, err = d.append(record{typ: recBarrier, flag: byte(CrashConsistent), seq: seq}, nil)
		}
		if err != nil {
			fail(err)
		}
		seqs <- seq
		acks <- c
		switch rng.IntN(40) {
		case 0:
			fmt.Println("fold-start")
			if err := d.Fold(ctx); err != nil {
				fail(err)
			}
		case 1:
			fmt.Println("gc-start")
			if _, err := s.GC(ctx); err != nil {
				fail(err)
			}
		case 2:
			if err := c.Wait(ctx); err != nil {
				fail(err)
			}
			info, err := d.Snapshot(ctx, SnapshotOptions{})
			if err != nil {
				fail(err)
			}
			fmt.Println("snap", info.ID, info.Seq)
			if snaps := d.Snapshots(); len(snaps) > 5 {
				fmt.Println("deleting", snaps[0].ID)
				if err := d.DeleteSnapshot(ctx, snaps[0].ID); err != nil {
					fail(err)
				}
			}
		}
	}
}

func TestCrashSafety(t *testing.T) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(dir)
		return
	}
	rounds := 60
	if testing.Short() {
		rounds = 15
	}
	ctx := context.Background()
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))

	cur := make([]byte, crashDiskSize) // model at curSeq
	curSeq := uint64(0)
	advance := func(to uint64) {
		for ; curSeq < to; curSeq++ {
			crashOpFor(curSeq + 1).apply(cur)
		}
	}
	snapStates := map[string][]byte{} // snapshot id -> expected content
	expectSnaps := map[string]bool{}  // reported and not being deleted
	lastAck := uint64(0)
	duringOp := 0
	deadline := time.Now().Add(100 * time.Second)

	for round := 0; round < rounds && time.Now().Before(deadline); round++ {
		cmd := exec.Command(exe, "-test.run=^TestCrashSafety$")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		killOn := ""
		switch rng.IntN(4) {
		case 0:
			killOn = "fold-start"
		case 1:
			killOn = "gc-start"
		}
		timer := time.NewTimer(time.Duration(40+rng.IntN(300)) * time.Millisecond)
		killed := false
		kill := func() {
			if !killed {
				killed = true
				cmd.Process.Signal(syscall.SIGKILL)
			}
		}
		var got []string
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				got = append(got, l)
				if killOn != "" && l == killOn {
					duringOp++
					kill()
				}
			case <-timer.C:
				kill()
			}
		}
		timer.Stop()
		cmd.Wait()
		if !killed {
			t.Fatalf("round %d: child exited on its own: %v", round, got)
		}
		for _, l := range got {
			f := strings.Fields(l)
			switch f[0] {
			case "error":
				t.Fatalf("round %d: child failed: %s", round, l)
			case "ack":
				seq, _ := strconv.ParseUint(f[1], 10, 64)
				if seq <= lastAck && seq != 0 {
					t.Fatalf("round %d: ack %d after %d", round, seq, lastAck)
				}
				lastAck = seq
			case "snap":
				expectSnaps[f[1]] = true
			case "deleting":
				delete(expectSnaps, f[1])
			}
		}

		opts, err := crashOptions(dir)
		if err != nil {
			t.Fatal(err)
		}
		opts.FoldInterval = -1
		s, err := Open(ctx, opts)
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		d, err := s.Disk("crash")
		if err != nil {
			s.Close()
			if round == 0 {
				continue // killed before the disk was created
			}
			t.Fatalf("round %d: %v", round, err)
		}
		durable := d.DurableSeq()
		if durable < lastAck {
			t.Fatalf("round %d: DurableSeq %d below the acknowledged %d", round, durable, lastAck)
		}
		// Snapshots created this round are at or after the previous round's state.
		snaps := d.Snapshots()
		sort.Slice(snaps, func(i, j int) bool { return snaps[i].Seq < snaps[j].Seq })
		present := map[string]bool{}
		from, _ := d.Window()
		checkAt := map[uint64]bool{}
		for range 3 {
			if durable > curSeq && durable-curSeq > 1 {
				checkAt[curSeq+1+rng.Uint64N(durable-curSeq)] = true
			}
		}
		var todo []uint64
		for _, sn := range snaps {
			present[sn.ID] = true
			if _, ok := snapStates[sn.ID]; !ok {
				if sn.Seq < curSeq {
					t.Fatalf("round %d: new snapshot %s at %d, before the last checked state %d", round, sn.ID, sn.Seq, curSeq)
				}
				todo = append(todo, sn.Seq)
			}
		}
		for seq := range checkAt {
			todo = append(todo, seq)
		}
		sort.Slice(todo, func(i, j int) bool { return todo[i] < todo[j] })
		for _, seq := range todo {
			advance(seq)
			id := snapshotID(seq)
			if present[id] {
				if _, ok := snapStates[id]; !ok {
					snapStates[id] = append([]byte(nil), cur...)
				}
			}
			if checkAt[seq] && seq >= from {
				r, err := d.OpenAt(ctx, seq)
				if err != nil {
					t.Fatalf("round %d: OpenAt(%d) in window [%d, %d]: %v", round, seq, from, durable, err)
				}
				if got := readAll(t, r); !bytes.Equal(got, cur) {
					t.Fatalf("round %d: state at %d differs at byte %d", round, seq, firstDiff(got, cur))
				}
				r.Close()
			}
		}
		advance(durable)
		r, err := d.OpenHead(ctx)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if got := readAll(t, r); !bytes.Equal(got, cur) {
			t.Fatalf("round %d: head at %d differs from the model at byte %d", round, durable, firstDiff(got, cur))
		}
		r.Close()
		for id := range expectSnaps {
			if !present[id] {
				t.Fatalf("round %d: acknowledged snapshot %s is gone", round, id)
			}
		}
		for id, want := range snapStates {
			if !present[id] {
				delete(snapStates, id)
				continue
			}
			r, err := d.OpenSnapshot(ctx, id)
			if err != nil {
				t.Fatalf("round %d: open snapshot %s: %v", round, id, err)
			}
			if got := readAll(t, r); !bytes.Equal(got, want) {
				t.Fatalf("round %d: snapshot %s differs at byte %d", round, id, firstDiff(got, want))
			}
			r.Close()
		}
		rep, err := s.Verify(ctx)
		if err != nil || !rep.OK() {
			t.Fatalf("round %d: Verify = %v, %v", round, rep.Problems, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if round == rounds-1 {
			t.Logf("%d rounds, %d writes acknowledged, %d killed right after a fold or GC started, %d snapshots alive", rounds, lastAck, duringOp, len(snapStates))
		}
	}
}
