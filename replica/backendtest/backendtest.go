// Package backendtest is the conformance suite for backend.Backend
// implementations. Every real backend runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, func(t *testing.T) backend.Backend { return newBackend(t) })
//	}
package backendtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/ferrymigrate/ferry/replica/backend"
)

// Run checks that the backends made by newBackend keep the backend.Backend
// contract. newBackend must return an empty backend each time it is called.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, b backend.Backend)
	}{
		{"PutGet", testPutGet},
		{"Overwrite", testOverwrite},
		{"NotFound", testNotFound},
		{"Delete", testDelete},
		{"List", testList},
		{"InvalidNames", testInvalidNames},
		{"Concurrent", testConcurrent},
		{"Empty", testEmpty},
		{"Batch", testBatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t)
			t.Cleanup(func() { b.Close() })
			tt.fn(t, b)
		})
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func testPutGet(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	for _, size := range []int{1, 100, 4096, 1 << 20, 3<<20 + 17} {
		name := fmt.Sprintf("data/obj-%d", size)
		want := randBytes(size)
		if err := b.Put(ctx, name, want); err != nil {
			t.Fatalf("Put(%s): %v", name, err)
		}
		got, err := b.Get(ctx, name)
		if err != nil {
			t.Fatalf("Get(%s): %v", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("Get(%s): got %d bytes, want %d bytes equal to what was put", name, len(got), len(want))
		}
	}
}

func testEmpty(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	if err := b.Put(ctx, "empty", nil); err != nil {
		t.Fatalf("Put empty: %v", err)
	}
	got, err := b.Get(ctx, "empty")
	if err != nil || len(got) != 0 {
		t.Fatalf("Get empty = %d bytes, %v; want 0 bytes, nil", len(got), err)
	}
}

func testOverwrite(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	if err := b.Put(ctx, "a/b/c", []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "a/b/c", []byte("second, longer")); err != nil {
		t.Fatal(err)
	}
	got, err := b.Get(ctx, "a/b/c")
	if err != nil || string(got) != "second, longer" {
		t.Fatalf("Get after overwrite = %q, %v; want %q", got, err, "second, longer")
	}
}

func testNotFound(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	for _, name := range []string{"missing", "deep/missing/object"} {
		_, err := b.Get(ctx, name)
		if !errors.Is(err, backend.ErrNotFound) {
			t.Errorf("Get(%s) error = %v, want ErrNotFound", name, err)
		}
	}
}

func testDelete(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	if err := b.Put(ctx, "x/y", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "x/y"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := b.Get(ctx, "x/y"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get after Delete error = %v, want ErrNotFound", err)
	}
	if err := b.Delete(ctx, "x/y"); err != nil {
		t.Fatalf("Delete of missing object = %v, want nil", err)
	}
	if err := b.Delete(ctx, "never/existed"); err != nil {
		t.Fatalf("Delete of never existing object = %v, want nil", err)
	}
}

func list(t *testing.T, b backend.Backend, prefix string) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	err := b.List(context.Background(), prefix, func(name string, size int64) error {
		if _, dup := got[name]; dup {
			t.Errorf("List(%q) reported %s twice", prefix, name)
		}
		got[name] = size
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

func testList(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	objs := map[string]int{
		"chunks/aa/aa01":  10,
		"chunks/aa/aa02":  20,
		"chunks/ab/ab01":  30,
		"maps/d1/0001":    40,
		"maps/d10/0001":   50,
		"snapshots/d1/s1": 0,
		"config":          5,
	}
	for name, size := range objs {
		if err := b.Put(ctx, name, randBytes(size)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"chunks/aa/aa01", "chunks/aa/aa02", "chunks/ab/ab01", "config", "maps/d1/0001", "maps/d10/0001", "snapshots/d1/s1"}},
		{"chunks/", []string{"chunks/aa/aa01", "chunks/aa/aa02", "chunks/ab/ab01"}},
		{"chunks/a", []string{"chunks/aa/aa01", "chunks/aa/aa02", "chunks/ab/ab01"}},
		{"chunks/aa/", []string{"chunks/aa/aa01", "chunks/aa/aa02"}},
		{"maps/d1/", []string{"maps/d1/0001"}},
		{"maps/d1", []string{"maps/d1/0001", "maps/d10/0001"}},
		{"nothing/", nil},
		{"conf", []string{"config"}},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			got := list(t, b, tt.prefix)
			var names []string
			for name, size := range got {
				names = append(names, name)
				if want := int64(objs[name]); size != want {
					t.Errorf("size of %s = %d, want %d", name, size, want)
				}
			}
			sort.Strings(names)
			if fmt.Sprint(names) != fmt.Sprint(tt.want) {
				t.Errorf("List(%q) = %v, want %v", tt.prefix, names, tt.want)
			}
		})
	}
	stop := errors.New("stop")
	err := b.List(ctx, "", func(string, int64) error { return stop })
	if !errors.Is(err, stop) {
		t.Errorf("List with failing callback = %v, want the callback's error", err)
	}
}

func testInvalidNames(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	for _, name := range []string{"", "../escape", "a/../../b", "/abs", "a//b", ".hidden", "a b"} {
		if err := b.Put(ctx, name, []byte("x")); err == nil {
			t.Errorf("Put(%q) succeeded, want an error", name)
		}
		if _, err := b.Get(ctx, name); err == nil {
			t.Errorf("Get(%q) succeeded, want an error", name)
		}
	}
}

func testConcurrent(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 8; i++ {
				name := fmt.Sprintf("conc/%d/%d", i, w)
				data := bytes.Repeat([]byte{byte(w), byte(i)}, 1000+w)
				if err := b.Put(ctx, name, data); err != nil {
					errs <- err
					return
				}
				got, err := b.Get(ctx, name)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, data) {
					errs <- fmt.Errorf("%s: read back different data", name)
					return
				}
				// Same name from every writer: the result must be one whole object.
				if err := b.Put(ctx, "conc/shared", data); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := b.Get(ctx, "conc/shared")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 2000 || len(got)%2 != 0 || !bytes.Equal(got, bytes.Repeat(got[:2], len(got)/2)) {
		t.Errorf("conc/shared is not one whole object written by a single Put")
	}
	if n := len(list(t, b, "conc/")); n != 8*8+1 {
		t.Errorf("List(conc/) found %d objects, want %d", n, 8*8+1)
	}
}

// testBatch stages objects concurrently in a backend.NewBatch (the
// backend's own when it implements backend.Batcher), one replacing an
// existing object, and checks that all are there after Commit.
func testBatch(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	if err := b.Put(ctx, "batch/00", []byte("old")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	bt := backend.NewBatch(b)
	want := map[string][]byte{}
	for i := 0; i < 40; i++ {
		want[fmt.Sprintf("batch/%02d", i)] = randBytes(100 + i*1000)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(want))
	for name, data := range want {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := bt.Put(ctx, name, data); err != nil {
				errs <- fmt.Errorf("batch Put(%s): %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := bt.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	for name, data := range want {
		got, err := b.Get(ctx, name)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get(%s) after Commit = %d bytes, %v; want the %d bytes staged", name, len(got), err, len(data))
		}
	}
	n := 0
	if err := b.List(ctx, "batch/", func(string, int64) error { n++; return nil }); err != nil {
		t.Fatalf("List: %v", err)
	}
	if n != len(want) {
		t.Fatalf("List found %d objects after Commit, want %d", n, len(want))
	}
	aborted := backend.NewBatch(b)
	if err := aborted.Put(ctx, "batch/aborted", []byte("x")); err != nil {
		t.Fatalf("batch Put: %v", err)
	}
	aborted.Abort()
}
