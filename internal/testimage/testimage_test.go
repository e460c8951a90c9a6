package testimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestMBRSector(t *testing.T) {
	code := bytes.Repeat([]byte{0x90}, 440)
	s, err := mbrSector(code, 0x12345678, []partition{
		{Active: true, Type: 0x0e, Start: 2048, Size: 65536},
		{Type: 0x83, Start: 67584, Size: 98304},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s[:440], code) || s[510] != 0x55 || s[511] != 0xaa {
		t.Fatal("boot code or signature wrong")
	}
	if got := binary.LittleEndian.Uint32(s[440:]); got != 0x12345678 {
		t.Errorf("disk id %#x", got)
	}
	if s[446] != 0x80 || s[446+16] != 0 || s[450] != 0x0e || s[450+16] != 0x83 {
		t.Errorf("flags or types wrong: % x", s[446:478])
	}
	if got := binary.LittleEndian.Uint32(s[446+16+8:]); got != 67584 {
		t.Errorf("p2 start %d", got)
	}
	if _, err := mbrSector(make([]byte, 441), 0, nil); err == nil {
		t.Error("441 bytes of boot code accepted")
	}
}

func TestCPIO(t *testing.T) {
	var buf bytes.Buffer
	c := &cpioWriter{w: &buf}
	c.Dir("dev")
	c.CharDev("dev/console", 0o600, 5, 1)
	c.File("init", 0o755, []byte("abc"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if !bytes.HasPrefix(b, []byte("070701")) || !bytes.Contains(b, []byte("TRAILER!!!")) || len(b)%4 != 0 {
		t.Fatalf("not a newc archive: %q", b[:32])
	}
}

// Build produces a partitioned disk whose second partition is ext4.
func TestBuild(t *testing.T) {
	img := ForTest(t)
	f, err := os.Open(img.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mbr := make([]byte, 512)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa || mbr[446] != 0x80 {
		t.Fatal("no bootable MBR")
	}
	start := int64(binary.LittleEndian.Uint32(mbr[446+16+8:])) * 512
	magic := make([]byte, 2)
	if _, err := f.ReadAt(magic, start+1024+0x38); err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint16(magic) != 0xef53 {
		t.Errorf("partition 2 is not ext4 (magic %x)", magic)
	}
}

func TestWriteFile(t *testing.T) {
	img := ForTest(t)
	disk := filepath.Join(t.TempDir(), "disk.raw")
	data, err := os.ReadFile(img.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, data, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if got, err := ReadFile(ctx, disk, "/www/index.html"); err != nil || string(got) != HTTPBody {
		t.Fatalf("ReadFile(index.html) = %q, %v", got, err)
	}
	for _, v := range []string{"first\n", "second, longer\n"} {
		if err := WriteFile(ctx, disk, "/www/data.txt", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := ReadFile(ctx, disk, "/www/data.txt"); err != nil || string(got) != "second, longer\n" {
		t.Fatalf("ReadFile(data.txt) = %q, %v", got, err)
	}
	if _, err := ReadFile(ctx, disk, "/www/missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadFile(missing) = %v, want ErrNotExist", err)
	}
	if err := WriteFile(ctx, disk, "/www/a b", nil); err == nil {
		t.Error("a path with a space accepted")
	}
}
