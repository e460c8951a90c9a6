package postlaunch

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestWaitConsole(t *testing.T) {
	log := filepath.Join(t.TempDir(), "console.log")
	go func() {
		time.Sleep(150 * time.Millisecond)
		os.WriteFile(log, []byte("SeaBIOS\r\nbooting\r\n"), 0o644)
		time.Sleep(150 * time.Millisecond)
		f, _ := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("FERRY-BOOT-OK\r\n")
		f.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r := WaitConsole(ctx, log, regexp.MustCompile(`FERRY-BOOT-OK`))
	if r.Status != Success || r.Output != "FERRY-BOOT-OK" || r.Duration < 250*time.Millisecond {
		t.Fatalf("WaitConsole = %+v", r)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	r = WaitConsole(ctx, log, regexp.MustCompile(`never`))
	if r.Status != Failed || !strings.Contains(r.Output, "FERRY-BOOT-OK") || !strings.Contains(r.Output, "deadline") {
		t.Fatalf("WaitConsole (timeout) = %+v", r)
	}
}

func TestTCPOpen(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r := TCPOpen(ctx, l.Addr().String()); r.Status != Success {
		t.Fatalf("TCPOpen(listening) = %+v", r)
	}

	// A forward with nothing behind it: accepted, then closed at once.
	closer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	go func() {
		for {
			c, err := closer.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx, cancel = context.WithTimeout(context.Background(), 800*time.Millisecond)
	defer cancel()
	if r := TCPOpen(ctx, closer.Addr().String()); r.Status != Failed || !strings.Contains(r.Output, "closed at once") {
		t.Fatalf("TCPOpen(closing) = %+v", r)
	}
}

func TestHTTPCheck(t *testing.T) {
	ready := time.Now().Add(300 * time.Millisecond)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if time.Now().Before(ready) {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("hello ferry"))
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r := HTTPCheck(ctx, srv.URL, 200, "ferry")
	if r.Status != Success || !strings.Contains(r.Output, "200 OK") {
		t.Fatalf("HTTPCheck = %+v", r)
	}
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if r := HTTPCheck(ctx, srv.URL, 200, "absent"); r.Status != Failed || !strings.Contains(r.Output, "hello ferry") {
		t.Fatalf("HTTPCheck(body mismatch) = %+v", r)
	}
}

func TestRunStopsAtFirstFailure(t *testing.T) {
	ok := func(ctx context.Context) Result { return Result{Check: "ok", Status: Success} }
	fail := func(ctx context.Context) Result {
		<-ctx.Done()
		return Result{Check: "fail", Status: Failed}
	}
	results, passed := Run(context.Background(), []Check{
		{Timeout: time.Second, Run: ok},
		{Timeout: 50 * time.Millisecond, Run: fail},
		{Timeout: time.Second, Run: ok},
	})
	if passed || len(results) != 2 || results[1].Check != "fail" {
		t.Fatalf("Run = %+v, %v", results, passed)
	}
}
