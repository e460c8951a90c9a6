package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry"

	"github.com/ferrymigrate/ferry/api"
)

func TestWriteData(t *testing.T) {
	res := api.BulkJobResult{
		Started:    []api.BulkJobStarted{{SourceServerID: "s-1", JobID: "mgnjob-1"}},
		NotStarted: []api.BulkJobSkipped{{SourceServerID: "s-2", Reason: "server s-2 is NOT_READY: wait"}},
	}
	tests := []struct {
		format string
		want   string
	}{
		{FormatYAML, "started:\n  - source_server_id: s-1\n    job_id: mgnjob-1\nnot_started:\n  - source_server_id: s-2\n    reason: 'server s-2 is NOT_READY: wait'\n"},
		{FormatJSON, "{\n  \"started\": [\n    {\n      \"source_server_id\": \"s-1\",\n      \"job_id\": \"mgnjob-1\"\n    }\n  ],\n  \"not_started\": [\n    {\n      \"source_server_id\": \"s-2\",\n      \"reason\": \"server s-2 is NOT_READY: wait\"\n    }\n  ]\n}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeData(&b, tt.format, res); err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != tt.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
	if err := CheckFormat("xml"); err == nil {
		t.Fatal("CheckFormat accepted xml")
	}
}

func TestProgressBar(t *testing.T) {
	tests := []struct {
		frac float64
		want string
	}{
		{0, "[..........]   0%"},
		{0.42, "[####......]  42%"},
		{1, "[##########] 100%"},
		{1.7, "[##########] 100%"},
		{-1, "[..........]   0%"},
	}
	for _, tt := range tests {
		if got := progressBar(tt.frac, 10); got != tt.want {
			t.Errorf("progressBar(%v) = %q, want %q", tt.frac, got, tt.want)
		}
	}
}

func TestWatchTable(t *testing.T) {
	var b bytes.Buffer
	servers := []ferry.SourceServer{
		{Hostname: "web-1", Lifecycle: ferry.LifecycleNotReady, Replication: ferry.ReplicationInfo{State: ferry.ReplicationInitialSync, ETASeconds: 90},
			Disks: []ferry.Disk{{SizeBytes: 100, ReplicatedBytes: 50}}},
		{Hostname: "db-1", Lifecycle: ferry.LifecycleReadyForTest, Replication: ferry.ReplicationInfo{State: ferry.ReplicationContinuous, LagSeconds: 2}},
	}
	if err := watchTable(&b, servers, 20); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "db-1") || !strings.Contains(lines[2], "50%") || !strings.Contains(lines[2], "1m30s") {
		t.Fatalf("watch table:\n%s", b.String())
	}
}
