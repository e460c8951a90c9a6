package storebench

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

func TestRunTiny(t *testing.T) {
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{
		Dir:            t.TempDir(),
		SeqBytes:       8 << 20,
		BaselineBytes:  8 << 20,
		RandomWrites:   256,
		RandomDiskSize: 64 << 20,
		ImageBytes:     4 << 20,
		Copies:         3,
		ChunkSize:      64 << 10,
		Logf:           t.Logf,
	}, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	for _, v := range []float64{res.FSWriteMBps, res.SeqIngestMBps, res.SeqFoldMBps, res.SeqEndToEndMBps, res.ZerosMBps, res.RandomIngestMBps, res.RandomFoldMBps} {
		if v <= 0 {
			t.Errorf("a rate is %v, want > 0: %+v", v, res)
		}
	}
	if _, err := exec.LookPath("qemu-img"); err == nil {
		if res.NBDReadMBps <= 0 || res.RawReadMBps <= 0 || res.NBDCopyMBps <= 0 || res.RawCopyMBps <= 0 || res.NBDSkipped != "" {
			t.Errorf("NBD read not measured: %+v", res)
		}
		if _, err := exec.LookPath("qemu-nbd"); err == nil {
			if res.QemuNBDReadMBps <= 0 || res.QemuNBDCopyMBps <= 0 || res.QemuNBDSkipped != "" {
				t.Errorf("qemu-nbd read not measured: %+v", res)
			}
		} else if res.QemuNBDSkipped == "" {
			t.Error("qemu-nbd is missing but its read is not reported as skipped")
		} else {
			t.Logf("SKIPPED qemu-nbd comparison: %s", res.QemuNBDSkipped)
		}
	} else if res.NBDSkipped == "" {
		t.Error("qemu-img is missing but the NBD read is not reported as skipped")
	}
	// Identical images are stored once: only the block maps differ.
	if res.DedupRatio < 1 || res.DedupRatio > 1.1 {
		t.Errorf("dedup ratio %v, want 1 to 1.1", res.DedupRatio)
	}
	for _, goal := range []string{"≥ 70 % of fs write", "≥ 2000 MB/s", "≥ 500 MB/s", "≤ 1.1 ×"} {
		if !strings.Contains(out.String(), goal) {
			t.Errorf("table lacks goal %q", goal)
		}
	}
	if !strings.Contains(out.String(), Pass) && !strings.Contains(out.String(), Miss) {
		t.Error("table has no PASS or MISS")
	}
	if _, err := json.Marshal(res); err != nil {
		t.Errorf("result is not JSON-able: %v", err)
	}
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, Options{Dir: t.TempDir(), SeqBytes: 1 << 20}, &bytes.Buffer{}); err == nil {
		t.Error("Run with a cancelled context succeeded")
	}
}
