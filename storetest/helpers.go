package storetest

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/ferrymigrate/ferry"
)

// base is the suite's clock: microsecond precision (what both SQL stores
// keep in time columns) in a zone other than UTC, so stores must compare
// and convert instants, not wall clocks.
var base = time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.FixedZone("UTC+2", 2*3600))

// at returns base plus d.
func at(d time.Duration) time.Time { return base.Add(d) }

var timeType = reflect.TypeFor[time.Time]()

// normalize rewrites v in place so that equal objects are DeepEqual: times
// in UTC (time.Time.Equal semantics), empty slices and maps as nil.
func normalize(v reflect.Value) {
	switch v.Kind() {
	case reflect.Interface:
		if v.IsNil() {
			return
		}
		if e := v.Elem(); (e.Kind() == reflect.Slice || e.Kind() == reflect.Map) && e.Len() == 0 && v.CanSet() {
			v.Set(reflect.Zero(v.Type()))
			return
		}
		normalize(v.Elem())
	case reflect.Pointer:
		if !v.IsNil() {
			normalize(v.Elem())
		}
	case reflect.Struct:
		if v.Type() == timeType {
			if v.CanSet() {
				v.Set(reflect.ValueOf(v.Interface().(time.Time).UTC()))
			}
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				normalize(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Len() == 0 {
			if v.CanSet() {
				v.Set(reflect.Zero(v.Type()))
			}
			return
		}
		for i := range v.Len() {
			normalize(v.Index(i))
		}
	case reflect.Map:
		if v.Len() == 0 && v.CanSet() {
			v.Set(reflect.Zero(v.Type()))
		}
	}
}

// same fails the test unless got and want are equal after normalizing
// both (which changes them).
func same(t *testing.T, what string, got, want any) {
	t.Helper()
	gv, wv := reflect.ValueOf(&got).Elem(), reflect.ValueOf(&want).Elem()
	normalize(gv)
	normalize(wv)
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", "  ")
		w, _ := json.MarshalIndent(want, "", "  ")
		t.Fatalf("%s:\ngot  %s\nwant %s\n(got %#v)", what, g, w, got)
	}
}

// wantErr fails the test unless errors.Is(err, target).
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want one wrapping %v", what, err, target)
	}
}

// ok fails the test on a non-nil error.
func ok(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// fullServer returns a server with every field set.
func fullServer(id, machineID string) *ferry.SourceServer {
	return &ferry.SourceServer{
		ID:        id,
		MachineID: machineID,
		Hostname:  "host-" + id,
		OS:        "Debian GNU/Linux 12",
		Kernel:    "6.1.0-18-amd64",
		CPUs:      4,
		RAMBytes:  8 << 30,
		NICs: []ferry.NIC{
			{Name: "eth0", MAC: "52:54:00:12:34:56", IPs: []string{"10.0.0.5/24", "fe80::1/64"}},
			{Name: "eth1", MAC: "52:54:00:12:34:57"},
		},
		Disks: []ferry.Disk{
			{Name: "/dev/vda", SizeBytes: 20 << 30, LogicalBlockSize: 512, Model: "QEMU HARDDISK", Boot: true,
				ReplicatedBytes: 1 << 30, RescannedBytes: 4096, BackloggedBytes: 8192, SentBytes: 5<<40 + 3},
			{Name: "/dev/vdb", SizeBytes: 100 << 30, LogicalBlockSize: 4096},
		},
		Tags:      map[string]string{"env": "prod", "owner": "", "ünïcode": "välue"},
		Lifecycle: ferry.LifecycleReadyForTest,
		Replication: ferry.ReplicationInfo{
			State:        ferry.ReplicationContinuous,
			ErrorCode:    ferry.FailedTo(ferry.StepCreateStagingDisks),
			ErrorMessage: "disk full: \"quoted\" \n newline",
			Steps: []ferry.InitiationStepState{
				{Step: ferry.StepAuthenticateWithService, Status: ferry.StepSucceeded},
				{Step: ferry.StepCreateStagingDisks, Status: ferry.StepFailed},
				{Step: ferry.StepStartDataTransfer, Status: ferry.StepNotStarted},
			},
			LagSeconds:         1.5,
			ETASeconds:         3600.25,
			LastSnapshotAt:     at(-10 * time.Minute),
			ReplicationServer:  "repl-1",
			ReplicatingSeconds: 86400*400 + 0.125,
		},
		ApplicationID:       "app-1",
		WaveID:              "wave-1",
		AgentVersion:        "0.1.0",
		AgentCertSerial:     "0a:1b:2c",
		AgentCertPrevSerial: "09:1b:2c",
		ReplicationSetup: ferry.ReplicationSettings{
			BandwidthBytesPerSec: 10 << 20,
			EncryptionKeyID:      "key-7",
			StagingStore:         "s3-main",
			PointInTime:          []ferry.RetentionRule{{IntervalMinutes: 10, KeepMinutes: 60}},
			DataPlaneRouting:     "PUBLIC_IP",
			ReplicationServer:    "repl-2",
		},
		LaunchSetup: ferry.LaunchSettings{
			Disposition: ferry.DispositionStopped,
			RightSizing: ferry.RightSizingNone,
			CPUs:        2,
			MemoryMiB:   2048,
			BootMode:    ferry.BootUEFI,
			Target:      "libvirt",
			Convert:     true,
			PostLaunchActions: []ferry.PostLaunchAction{
				{ID: "pla-1", Name: "check ssh", Active: true, Order: 1, TimeoutSeconds: 60, MustSucceed: true,
					Deployment: "TEST_AND_CUTOVER", Category: "VALIDATION",
					Parameters: map[string]string{"port": "22", "host": "{{ip}}"}},
				{ID: "pla-2", Name: "noop", Order: 2, Deployment: "CUTOVER_ONLY", Category: "CONFIGURATION"},
			},
		},
		LastSeenAt: at(-time.Second),
		CreatedAt:  at(-time.Hour),
		UpdatedAt:  at(0),
	}
}

// server returns a minimal server.
func server(id string) *ferry.SourceServer {
	return &ferry.SourceServer{
		ID:          id,
		Hostname:    "h-" + id,
		Lifecycle:   ferry.LifecycleNotReady,
		Replication: ferry.ReplicationInfo{State: ferry.ReplicationStopped},
		Disks:       []ferry.Disk{{Name: "/dev/sda", SizeBytes: 1 << 20}},
		CreatedAt:   base,
		UpdatedAt:   base,
	}
}

// perm returns 0..n-1 in a fixed scrambled order.
func perm(n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = (i*7 + 3) % n
	}
	if n%7 == 0 {
		for i := range p {
			p[i] = n - 1 - i
		}
	}
	return p
}

// pageSizes are the page sizes every paginated list is walked with.
var pageSizes = []int{1, 7, 100}

// walk calls list with page size n until the cursor is empty and returns
// the keys of everything listed, checking that every page but the last is
// full and that cursors are opaque (never a bare key).
func walk[T any](t *testing.T, n int, key func(T) string, list func(after string, limit int) ([]T, string, error)) []string {
	t.Helper()
	var keys []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 1000 {
			t.Fatalf("page size %d: more than 1000 pages", n)
		}
		page, next, err := list(after, n)
		if err != nil {
			t.Fatalf("page size %d, after %q: %v", n, after, err)
		}
		if len(page) > n {
			t.Fatalf("page size %d: got %d items", n, len(page))
		}
		for _, v := range page {
			keys = append(keys, key(v))
		}
		if next == "" {
			return keys
		}
		if len(page) != n {
			t.Fatalf("page size %d: short page of %d items before the last", n, len(page))
		}
		if slices.Contains(keys, next) {
			t.Fatalf("page size %d: cursor %q is a bare key; cursors must be opaque", n, next)
		}
		after = next
	}
}
