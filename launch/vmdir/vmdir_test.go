package vmdir

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymigrate/ferry/launch"
)

type testState struct {
	ID   string `json:"id"`
	Note string `json:"note"`
}

func TestStates(t *testing.T) {
	s := States{Dir: t.TempDir(), Target: "test"}
	if err := s.Write("a-1", testState{ID: "a-1", Note: "x"}); err != nil {
		t.Fatal(err)
	}
	// A state file whose content names another instance.
	if err := os.WriteFile(s.Path("b-1"), []byte(`{"id":"a-1"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Path("c-1"), []byte(`{"id":`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id       string
		want     string // note, when no error
		notFound bool
		errText  string
	}{
		{id: "a-1", want: "x"},
		{id: "missing", notFound: true},
		{id: "../a-1", notFound: true},
		{id: "b-1", errText: `names instance "a-1"`},
		{id: "c-1", errText: "read state of c-1"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			var got testState
			err := s.Read(tc.id, &got)
			switch {
			case tc.notFound:
				if !errors.Is(err, launch.ErrNotFound) {
					t.Fatalf("Read = %v, want ErrNotFound", err)
				}
			case tc.errText != "":
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("Read = %v, want an error containing %q", err, tc.errText)
				}
			default:
				if err != nil || got.Note != tc.want {
					t.Fatalf("Read = %+v, %v; want note %q", got, err, tc.want)
				}
			}
		})
	}
	ids, err := s.IDs()
	if err != nil || strings.Join(ids, ",") != "a-1,b-1,c-1" {
		t.Fatalf("IDs = %v, %v", ids, err)
	}
	if err := s.Remove("a-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("a-1"); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestCreate(t *testing.T) {
	base := t.TempDir()
	s := States{Dir: filepath.Join(base, "state"), Target: "test"}
	dir, err := s.Create("", "i-1", "qmp.sock")
	if err != nil || dir != filepath.Join(base, "state", "i-1") {
		t.Fatalf("Create = %q, %v", dir, err)
	}
	if _, err := s.Create("", "i-1", "qmp.sock"); err == nil {
		t.Fatal("Create of an existing instance directory succeeded")
	}
	long := filepath.Join(base, strings.Repeat("d", 100))
	if _, err := s.Create(long, "i-2", "qmp.sock"); !errors.Is(err, launch.ErrInvalidSpec) {
		t.Fatalf("Create with a work dir too long for a socket = %v, want ErrInvalidSpec", err)
	}
	if _, err := os.Stat(long); !os.IsNotExist(err) {
		t.Fatalf("a refused Create made %s", long)
	}
}

func TestNewID(t *testing.T) {
	for _, name := range []string{"a", strings.Repeat("n", 63)} {
		id := NewID(name)
		if !launch.ValidName(id) || len(id) > 63 || id == NewID(name) {
			t.Errorf("NewID(%q) = %q", name, id)
		}
	}
}

func TestPickPorts(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.Addr().(*net.TCPAddr).Port
	got, err := PickPorts("127.0.0.1", []launch.Forward{{GuestPort: 22}, {GuestPort: 80}})
	if err != nil || len(got) != 2 || got[0].HostPort == 0 || got[1].HostPort == 0 || got[0].GuestPort != 22 {
		t.Fatalf("PickPorts = %+v, %v", got, err)
	}
	_, err = PickPorts("127.0.0.1", []launch.Forward{{GuestPort: 22}, {GuestPort: 80, HostPort: port}})
	if !errors.Is(err, launch.ErrPortInUse) || !strings.Contains(err.Error(), "guest port 80") {
		t.Fatalf("PickPorts with a taken port = %v, want ErrPortInUse naming it", err)
	}
}
