package nbd

import (
	"bytes"
	"context"
	"testing"
)

func TestClientReadAndBlockStatus(t *testing.T) {
	data := make([]byte, 1<<20)
	for i := 256 << 10; i < 512<<10; i++ {
		data[i] = byte(i)
	}
	dev := memExtentDevice{&memDevice{data: data, holes: []Extent{{Offset: 0, Length: 256 << 10, Zero: true}, {Offset: 512 << 10, Length: 512 << 10, Zero: true}}}}
	sock := startServer(t, map[string]Device{"d": dev})
	c, err := DialClient(context.Background(), "unix:"+sock, "d", "base:allocation", "qemu:dirty-bitmap:none")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != int64(len(data)) {
		t.Fatalf("size %d, want %d", c.Size(), len(data))
	}
	if c.HasContext("qemu:dirty-bitmap:none") || !c.HasContext("base:allocation") {
		t.Fatalf("contexts: %v", c.meta)
	}
	got := make([]byte, 384<<10)
	if _, err := c.ReadAt(got, 128<<10); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data[128<<10:512<<10]) {
		t.Fatal("read returned other data")
	}
	st, err := c.BlockStatus("base:allocation", 0, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	want := []BlockStatus{{0, 256 << 10, StateHole | StateZero}, {256 << 10, 256 << 10, 0}, {512 << 10, 512 << 10, StateHole | StateZero}}
	if len(st) != len(want) {
		t.Fatalf("block status %v, want %v", st, want)
	}
	for i := range want {
		if st[i] != want[i] {
			t.Errorf("extent %d: got %+v, want %+v", i, st[i], want[i])
		}
	}
	if _, err := c.BlockStatus("qemu:dirty-bitmap:none", 0, 4096); err == nil {
		t.Error("block status of a context not negotiated succeeded")
	}
}
