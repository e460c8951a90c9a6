package cli

import (
	"bytes"
	"testing"

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
