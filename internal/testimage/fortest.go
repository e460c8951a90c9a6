package testimage

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"
)

var forTest struct {
	once sync.Once
	img  *Image
	err  error
	took time.Duration
}

// ForTest returns the test image, building it once per test binary. When a
// tool or package is missing it skips t loudly, or fails it when
// FERRY_TEST_REQUIRE_ALL=1 (as CI sets it); other build errors fail t.
func ForTest(t testing.TB) *Image {
	t.Helper()
	forTest.once.Do(func() {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		forTest.img, forTest.err = Build(ctx, Options{})
		forTest.took = time.Since(start)
	})
	if err := forTest.err; err != nil {
		if errors.Is(err, ErrMissingTool) {
			msg := "SKIP: cannot build the test image: " + err.Error()
			if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
				t.Fatal(msg + "; FERRY_TEST_REQUIRE_ALL=1 forbids skips")
			}
			t.Skip(msg)
		}
		t.Fatalf("build test image: %v", err)
	}
	t.Logf("test image %s (%d MiB, kernel %s), ready in %v", forTest.img.Path, forTest.img.Size>>20, forTest.img.KernelVersion, forTest.took.Round(time.Millisecond))
	return forTest.img
}
