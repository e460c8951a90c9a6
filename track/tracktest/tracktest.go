// Package tracktest is the conformance suite every track.Tracker runs, and
// the helpers it uses: loop devices over sparse files, direct writes at
// known offsets, and collection of batches. The tests need root; they skip
// loudly without it, and fail instead when FERRY_TEST_REQUIRE_ALL=1.
package tracktest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrymigrate/ferry/track"
)

// RequireRoot skips t unless it runs as root, or fails it when
// FERRY_TEST_REQUIRE_ALL=1 (a required integration test that skips is a
// failure, not a pass).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("FERRY_TEST_REQUIRE_ALL") == "1" {
		t.Fatal("this test needs root (loop devices, eBPF) and FERRY_TEST_REQUIRE_ALL=1 forbids skipping it")
	}
	t.Skip("SKIPPED: this test needs root (loop devices, eBPF); run as root, CI does")
}

// Loop attaches a loop device over a new sparse file of size bytes and
// returns its path; cleanup detaches it. With partitioned, the file gets a
// GPT with one partition from 1 MiB to the end and the loop device is
// scanned for partitions (see Partition).
func Loop(t testing.TB, size int64, partitioned bool) string {
	t.Helper()
	RequireRoot(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	args := []string{"--find", "--show"}
	if partitioned {
		Run(t, "sfdisk", "--quiet", img, "label: gpt\nstart=2048, type=linux\n")
		args = append(args, "--partscan")
	}
	dev := strings.TrimSpace(Run(t, "losetup", append(args, img)...))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// Partition returns a device node of the first partition of a loop device
// that Loop made partitioned: /dev/loopNp1, or a node made in a temporary
// directory where no udev makes it.
func Partition(t testing.TB, dev string) string {
	t.Helper()
	name := filepath.Base(dev) + "p1"
	if _, err := os.Stat("/sys/class/block/" + name); err != nil {
		// losetup --partscan does not always add the partitions here.
		Run(t, "partx", "-a", dev)
	}
	for i := 0; ; i++ {
		if _, err := os.Stat("/sys/class/block/" + name + "/dev"); err == nil {
			break
		}
		if i == 100 {
			t.Fatalf("partition %s did not appear", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return Node(t, name)
}

// Node returns a device node for the block device name in sysfs (e.g.
// loop1p1): /dev/name, or a node made in a temporary directory where no
// udev made it.
func Node(t testing.TB, name string) string {
	t.Helper()
	if _, err := os.Stat("/dev/" + name); err == nil {
		return "/dev/" + name
	}
	devno, err := os.ReadFile("/sys/class/block/" + name + "/dev")
	if err != nil {
		t.Fatal(err)
	}
	var major, minor uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(devno)), "%d:%d", &major, &minor); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(t.TempDir(), name)
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(major, minor))); err != nil {
		t.Fatalf("mknod %s: %v", node, err)
	}
	return node
}

// Run runs a command and returns its standard output; the last argument
// of a sfdisk call is its standard input.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	var stdin string
	if name == "sfdisk" {
		stdin, args = args[len(args)-1], args[:len(args)-1]
	}
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return string(out)
}

// Write writes length random bytes at off of dev with O_DIRECT (dd
// oflag=direct), one request per bs bytes (bs 0: one dd block).
func Write(t testing.TB, dev string, off, length, bs int64) {
	t.Helper()
	if bs == 0 {
		bs = length
	}
	Run(t, "dd", "if=/dev/urandom", "of="+dev, "bs="+strconv.FormatInt(bs, 10),
		"count="+strconv.FormatInt(length/bs, 10), "seek="+strconv.FormatInt(off, 10),
		"oflag=direct,seek_bytes", "conv=notrunc", "status=none")
}

// Collect calls Next until done is true of the extents gathered so far per
// device (and whether any batch of the device was Lost) or timeout passes.
// It returns what it gathered, coalesced per device.
func Collect(t testing.TB, tr track.Tracker, timeout time.Duration, done func(map[string][]track.Extent) bool) (ext map[string][]track.Extent, lost map[string]bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	sets := map[string]*track.ExtentSet{}
	ext, lost = map[string][]track.Extent{}, map[string]bool{}
	for {
		if done != nil && done(ext) {
			return ext, lost
		}
		batches, err := tr.Next(ctx)
		if errors.Is(err, context.DeadlineExceeded) {
			return ext, lost
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		for _, b := range batches {
			checkBatch(t, b)
			lost[b.Device] = lost[b.Device] || b.Lost
			s := sets[b.Device]
			if s == nil {
				s = track.NewExtentSet(1, 1<<30)
				sets[b.Device] = s
			}
			for _, e := range b.Extents {
				s.Add(e.Offset, e.Length)
			}
			ext[b.Device] = s.Extents()
		}
	}
}

// checkBatch checks a batch's extents are sorted, separate and 512-aligned.
func checkBatch(t testing.TB, b track.Batch) {
	t.Helper()
	for i, e := range b.Extents {
		if e.Length <= 0 || e.Offset%512 != 0 || e.Length%512 != 0 {
			t.Errorf("%s: extent %v empty or not aligned to 512", b.Device, e)
		}
		if i > 0 && b.Extents[i-1].Offset+b.Extents[i-1].Length >= e.Offset {
			t.Errorf("%s: extents %v, %v not sorted and coalesced", b.Device, b.Extents[i-1], e)
		}
	}
}

// Covers reports whether ext covers [off, off+length).
func Covers(ext []track.Extent, off, length int64) bool {
	for _, e := range ext {
		if e.Offset <= off && off < e.Offset+e.Length {
			if off+length <= e.Offset+e.Length {
				return true
			}
			length -= e.Offset + e.Length - off
			off = e.Offset + e.Length
		}
	}
	return length <= 0
}

// Drain calls Next for d and fails if a batch has extents; Lost batches
// (a rescan tracker's baseline) are accepted.
func Drain(t testing.TB, tr track.Tracker, d time.Duration) {
	t.Helper()
	ext, _ := Collect(t, tr, d, nil)
	for dev, e := range ext {
		if len(e) > 0 {
			t.Fatalf("%s: extents %v before any write", dev, e)
		}
	}
}

// FileExtents returns the byte ranges of the device that hold file's data
// (filefrag), for a file system on a device whose block size is bs.
func FileExtents(t testing.TB, file string) []track.Extent {
	t.Helper()
	out := Run(t, "filefrag", "-e", "-b1024", file)
	var ext []track.Extent
	for _, line := range strings.Split(out, "\n") {
		// "   0:        0..     255:      34816..     35071:    256:  last,eof"
		f := strings.FieldsFunc(line, func(r rune) bool { return r == ':' || r == ' ' || r == '.' })
		if len(f) < 6 {
			continue
		}
		if _, err := strconv.Atoi(f[0]); err != nil {
			continue
		}
		phys, err1 := strconv.ParseInt(f[3], 10, 64)
		n, err2 := strconv.ParseInt(f[5], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		ext = append(ext, track.Extent{Offset: phys * 1024, Length: n * 1024})
	}
	if len(ext) == 0 {
		t.Fatalf("no extents in filefrag output:\n%s", out)
	}
	return ext
}

// Suite runs the conformance tests against the trackers newTracker makes.
// The tracker must report writes completed after newTracker returns
// (after the first Lost-only batches for a rescan tracker).
func Suite(t *testing.T, newTracker func(t *testing.T, devices []string) track.Tracker) {
	RequireRoot(t)
	t.Run("DirectWrites", func(t *testing.T) {
		dev, other := Loop(t, 64<<20, false), Loop(t, 64<<20, false)
		tr := newTracker(t, []string{dev})
		defer tr.Close()
		Drain(t, tr, 400*time.Millisecond)
		writes := []track.Extent{{Offset: 4096, Length: 8192}, {Offset: 1 << 20, Length: 512},
			{Offset: 10<<20 + 1536, Length: 1536}, {Offset: 63 << 20, Length: 1 << 20}}
		for _, w := range writes {
			Write(t, dev, w.Offset, w.Length, 0)
			Write(t, other, w.Offset, w.Length, 0)
		}
		ext, _ := Collect(t, tr, 10*time.Second, func(got map[string][]track.Extent) bool {
			for _, w := range writes {
				if !Covers(got[dev], w.Offset, w.Length) {
					return false
				}
			}
			return true
		})
		for _, w := range writes {
			if !Covers(ext[dev], w.Offset, w.Length) {
				t.Errorf("write %v not reported: got %v", w, ext[dev])
			}
		}
		if _, ok := ext[other]; ok {
			t.Errorf("untracked %s reported: %v", other, ext[other])
		}
	})
	t.Run("FileSystem", func(t *testing.T) {
		dev := Loop(t, 64<<20, false)
		Run(t, "mkfs.ext4", "-q", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
		mnt := t.TempDir()
		tr := newTracker(t, []string{dev})
		defer tr.Close()
		Run(t, "mount", dev, mnt)
		t.Cleanup(func() { Run(t, "umount", mnt) })
		Collect(t, tr, 400*time.Millisecond, nil) // mount writes the superblock: accept it
		file := filepath.Join(mnt, "data")
		Run(t, "dd", "if=/dev/urandom", "of="+file, "bs=1M", "count=2", "status=none")
		Run(t, "sync")
		want := FileExtents(t, file)
		ext, _ := Collect(t, tr, 10*time.Second, func(got map[string][]track.Extent) bool {
			for _, w := range want {
				if !Covers(got[dev], w.Offset, w.Length) {
					return false
				}
			}
			return true
		})
		for _, w := range want {
			if !Covers(ext[dev], w.Offset, w.Length) {
				t.Errorf("file data at %v not reported: got %v", w, ext[dev])
			}
		}
	})
	t.Run("Close", func(t *testing.T) {
		dev := Loop(t, 16<<20, false)
		tr := newTracker(t, []string{dev})
		if err := tr.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		Write(t, dev, 0, 4096, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := tr.Next(ctx)
		if !errors.Is(err, track.ErrClosed) {
			t.Fatalf("Next after Close = %v, want an error wrapping track.ErrClosed", err)
		}
		if err := tr.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

// String formats extents for messages.
func String(ext []track.Extent) string {
	var b strings.Builder
	for _, e := range ext {
		fmt.Fprintf(&b, "[%d+%d]", e.Offset, e.Length)
	}
	return b.String()
}
