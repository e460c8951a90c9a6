package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry/replica/backend"
)

func openPacked(t *testing.T, dir string, opts ...Option) *Backend {
	t.Helper()
	b, err := Open(dir, append([]Option{Packed("chunks/")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() }) // Close is idempotent
	return b
}

// putBatch commits objects name -> data in one batch.
func putBatch(t *testing.T, b *Backend, objs map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	bt := b.NewBatch()
	for n, d := range objs {
		if err := bt.Put(ctx, n, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := bt.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

func obj(i, v int) []byte {
	return []byte(fmt.Sprintf("object %04d version %d %s", i, v, strings.Repeat("x", 100)))
}

func chunk(i int) string { return fmt.Sprintf("chunks/%02x/%04d", i%256, i) }

// packFiles lists the pack files under dir.
func packFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(dir, packsDir), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".pack") {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// check asserts that exactly want is stored (Get and List).
func check(t *testing.T, b *Backend, want map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	for n, d := range want {
		got, err := b.Get(ctx, n)
		if err != nil || !bytes.Equal(got, d) {
			t.Fatalf("Get(%s) = %q, %v; want %q", n, got, err, d)
		}
	}
	listed := map[string]int64{}
	if err := b.List(ctx, "", func(n string, size int64) error {
		if _, dup := listed[n]; dup {
			t.Errorf("List reported %s twice", n)
		}
		listed[n] = size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for n, d := range want {
		if listed[n] != int64(len(d)) {
			t.Errorf("List: %s has size %d, want %d", n, listed[n], len(d))
		}
	}
	for n := range listed {
		if _, ok := want[n]; !ok {
			t.Errorf("List reported %s, which should not exist", n)
		}
	}
}

func TestPacksSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	b := openPacked(t, dir)
	want := map[string][]byte{}
	for round := 0; round < 3; round++ {
		batch := map[string][]byte{}
		for i := round * 50; i < round*50+80; i++ { // overlaps the previous round
			batch[chunk(i)] = obj(i, round)
			want[chunk(i)] = obj(i, round)
		}
		batch["maps/d/1"] = []byte("a file, not packed")
		want["maps/d/1"] = batch["maps/d/1"]
		putBatch(t, b, batch)
	}
	if err := b.Put(context.Background(), chunk(7), obj(7, 9)); err != nil {
		t.Fatal(err)
	}
	want[chunk(7)] = obj(7, 9)
	check(t, b, want)
	if _, err := os.Stat(filepath.Join(dir, "maps", "d", "1")); err != nil {
		t.Errorf("unpacked object is not a file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks")); !os.IsNotExist(err) {
		t.Errorf("packed objects were written as files: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	reopened := openPacked(t, dir)
	check(t, reopened, want)
	reopened.Close()
	// Packs are read whatever the options: opening without Packed loses
	// nothing.
	plain, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	check(t, plain, want)
}

func TestPackedDeleteIsDurable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := openPacked(t, dir)
	want := map[string][]byte{}
	first := map[string][]byte{}
	for i := 0; i < 20; i++ {
		first[chunk(i)] = obj(i, 1)
		want[chunk(i)] = obj(i, 1)
	}
	putBatch(t, b, first)
	// A newer copy of chunk 3 in a second pack; the first pack keeps
	// the old one. Deleting the name must delete both copies.
	putBatch(t, b, map[string][]byte{chunk(3): obj(3, 2)})
	for _, i := range []int{3, 5} {
		if err := b.Delete(ctx, chunk(i)); err != nil {
			t.Fatal(err)
		}
		delete(want, chunk(i))
	}
	if _, err := b.Get(ctx, chunk(3)); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get of a deleted object: %v, want ErrNotFound", err)
	}
	check(t, b, want)
	// Reopen without Close, as after a kill: the delete log was written
	// before Delete returned. (Dropping b's lock stands in for its
	// process dying; b is not used again.)
	b.lock.Close()
	killed := openPacked(t, dir)
	check(t, killed, want)
	b.Close()
	killed.Close()
	b = openPacked(t, dir)
	defer b.Close()
	check(t, b, want)
}

func TestPackCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := openPacked(t, dir)
	want := map[string][]byte{}
	all := map[string][]byte{}
	for i := 0; i < 100; i++ {
		all[chunk(i)] = obj(i, 1)
		want[chunk(i)] = obj(i, 1)
	}
	putBatch(t, b, all)
	before := packFiles(t, dir)
	if len(before) != 1 {
		t.Fatalf("one batch made %d packs, want 1", len(before))
	}
	// Readers run through the compaction and must never miss an object
	// that is not deleted.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var readErr error
	var mu sync.Mutex
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 60; ; i = 60 + (i+1)%40 {
				select {
				case <-stop:
					return
				default:
				}
				got, err := b.Get(ctx, chunk(i))
				if err != nil || !bytes.Equal(got, obj(i, 1)) {
					mu.Lock()
					readErr = fmt.Errorf("Get(%s) during compaction = %q, %v", chunk(i), got, err)
					mu.Unlock()
					return
				}
			}
		}()
	}
	for i := 0; i < 60; i++ {
		if err := b.Delete(ctx, chunk(i)); err != nil {
			t.Fatal(err)
		}
		delete(want, chunk(i))
	}
	// The background compactor was queued; run it here too (it returns
	// at once if the compactor is at it) and wait for the old pack to go.
	var seq uint64
	fmt.Sscanf(filepath.Base(before[0]), "%016x.pack", &seq)
	if err := b.pk.compact(seq); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(before[0]); os.IsNotExist(err) {
			break
		}
	}
	close(stop)
	wg.Wait()
	if readErr != nil {
		t.Fatal(readErr)
	}
	after := packFiles(t, dir)
	if len(after) != 1 || after[0] == before[0] {
		t.Fatalf("packs after compaction: %v (before: %v); want one new pack", after, before)
	}
	st, err := os.Stat(after[0])
	if err != nil {
		t.Fatal(err)
	}
	var liveBytes int64
	for _, d := range want {
		liveBytes += int64(len(d))
	}
	if st.Size() > liveBytes+4096 {
		t.Errorf("compacted pack is %d bytes for %d bytes of objects", st.Size(), liveBytes)
	}
	check(t, b, want)
	b.Close()
	b = openPacked(t, dir)
	check(t, b, want)
	// Deleting the rest removes the pack (at once, or when a compaction
	// that the deletes queued ends), and the delete log is pruned at the
	// next open.
	for n := range want {
		if err := b.Delete(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	if got := packFiles(t, dir); len(got) != 0 {
		t.Errorf("packs left after deleting every object: %v", got)
	}
	b = openPacked(t, dir)
	defer b.Close()
	check(t, b, map[string][]byte{})
	if fi, err := os.Stat(filepath.Join(dir, packsDir, tombLog)); err != nil || fi.Size() != 0 {
		t.Errorf("delete log after every pack is gone: %v, %v; want empty", fi, err)
	}
}

func TestPackCorruptionIsNamed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := openPacked(t, dir)
	objs := map[string][]byte{chunk(1): obj(1, 1), chunk(2): obj(2, 1)}
	putBatch(t, b, objs)
	b.Close()
	pack := packFiles(t, dir)[0]
	raw, err := os.ReadFile(pack)
	if err != nil {
		t.Fatal(err)
	}
	// A flipped bit in an object: Get fails naming the pack, never
	// returning the bad bytes.
	bad := bytes.Clone(raw)
	bad[packHeaderSize+3] ^= 0x40
	if err := os.WriteFile(pack, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	b = openPacked(t, dir)
	var hit int
	for n := range objs {
		data, err := b.Get(ctx, n)
		if err != nil {
			hit++
			if !strings.Contains(err.Error(), filepath.Base(pack)) || !strings.Contains(err.Error(), "checksum") {
				t.Errorf("Get(%s) error %q does not name the pack and the checksum", n, err)
			}
			if data != nil {
				t.Errorf("Get(%s) returned data with its error", n)
			}
		}
	}
	if hit != 1 {
		t.Errorf("%d objects failed their checksum, want 1", hit)
	}
	b.Close()
	// A damaged index: the pack is reported and its objects are missing,
	// not invented.
	bad = bytes.Clone(raw)
	bad[len(bad)-packFooterSize-5] ^= 0x01
	if err := os.WriteFile(pack, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	b = openPacked(t, dir)
	defer b.Close()
	dmg := b.Damaged()
	if len(dmg) != 1 {
		t.Fatalf("Damaged() = %v, want the one pack", dmg)
	}
	for name, err := range dmg {
		if !strings.HasSuffix(name, filepath.Base(pack)) || !strings.Contains(err.Error(), "checksum") {
			t.Errorf("Damaged() = %s: %v", name, err)
		}
	}
	if _, err := b.Get(ctx, chunk(1)); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Get from a pack with a damaged index: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(pack); err != nil {
		t.Errorf("damaged pack was removed: %v", err)
	}
	// New packs do not reuse its number.
	putBatch(t, b, map[string][]byte{chunk(9): obj(9, 1)})
	if got := packFiles(t, dir); len(got) != 2 {
		t.Errorf("packs = %v, want the damaged one and a new one", got)
	}
}

func TestPacksReadLooseFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	old, err := Open(dir) // a store from before packs
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := old.Put(ctx, chunk(i), obj(i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()
	b := openPacked(t, dir)
	want := map[string][]byte{chunk(0): obj(0, 1), chunk(1): obj(1, 1), chunk(2): obj(2, 1)}
	check(t, b, want)
	// A new copy goes to a pack and wins; deleting removes both.
	putBatch(t, b, map[string][]byte{chunk(1): obj(1, 2)})
	want[chunk(1)] = obj(1, 2)
	check(t, b, want)
	if err := b.Delete(ctx, chunk(1)); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, chunk(2)); err != nil {
		t.Fatal(err)
	}
	delete(want, chunk(1))
	delete(want, chunk(2))
	check(t, b, want)
	b.Close()
	b = openPacked(t, dir)
	defer b.Close()
	check(t, b, want)
}

func TestDeleteLogTornTail(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := openPacked(t, dir)
	putBatch(t, b, map[string][]byte{chunk(1): obj(1, 1), chunk(2): obj(2, 1), chunk(3): obj(3, 1)})
	if err := b.Delete(ctx, chunk(1)); err != nil {
		t.Fatal(err)
	}
	b.Close()
	log := filepath.Join(dir, packsDir, tombLog)
	f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := appendTomb(nil, chunk(2), 1<<40)
	f.Write(rec[:len(rec)-3]) // a crash in the middle of an append
	f.Close()
	b = openPacked(t, dir)
	check(t, b, map[string][]byte{chunk(2): obj(2, 1), chunk(3): obj(3, 1)})
	if err := b.Delete(ctx, chunk(3)); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b = openPacked(t, dir)
	defer b.Close()
	check(t, b, map[string][]byte{chunk(2): obj(2, 1)})
}

func TestOpenIsExclusive(t *testing.T) {
	dir := t.TempDir()
	b := openPacked(t, dir)
	if _, err := Open(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open of a directory in use: %v, want ErrLocked", err)
	}
	b.Close()
	openPacked(t, dir)
}

func TestPackBadPrefix(t *testing.T) {
	if _, err := Open(t.TempDir(), Packed("../x")); err == nil || !strings.Contains(err.Error(), "../x") {
		t.Errorf("Open with an invalid packed prefix: %v", err)
	}
}
