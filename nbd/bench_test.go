package nbd

import (
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// BenchmarkSnapshotRead measures reading a whole disk with qemu-img convert
// into qemu's null-co driver (a /dev/null that reports its size): once from
// an export of this server, once from the same raw file directly, in the
// same run. The ratio is the cost of serving over NBD. Run it with
//
//	go test -run '^$' -bench SnapshotRead -benchtime 5x ./nbd/
func BenchmarkSnapshotRead(b *testing.B) {
	qemuImg := requireBinary(b, "qemu-img")
	const size = 512 * mib
	img := filepath.Join(b.TempDir(), "disk.raw")
	f, err := os.Create(img)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	sock := startServer(b, map[string]Device{"disk": openFileDevice(b, img)})
	target := "driver=null-co,size=" + strconv.Itoa(size)

	for _, src := range []struct{ name, path string }{
		{"nbd", nbdURI(sock, "disk")},
		{"raw-file", img},
	} {
		b.Run(src.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				runCmd(b, qemuImg, "convert", "-n", "-f", "raw", src.path, "--target-image-opts", target)
			}
		})
	}
}

// BenchmarkServerRead measures the server alone: 2 MiB reads, 16 in
// flight, from an in-memory device, with the test client.
func BenchmarkServerRead(b *testing.B) {
	data := make([]byte, 64*mib)
	rand.Read(data)
	sock := startServer(b, map[string]Device{"disk": &memDevice{data: data}})
	c := dial(b, sock)
	c.negotiate("disk", true, false)
	const reqSize, depth = 2 * mib, 16
	b.SetBytes(reqSize)
	b.ResetTimer()
	sent := 0
	for i := 0; i < b.N; i++ {
		for ; sent < b.N && sent < i+depth; sent++ {
			c.request(cmdRead, 0, uint64(sent), uint64(sent%32)*reqSize, reqSize, nil)
		}
		if r := c.readReply(); r.errno != 0 {
			b.Fatalf("errno %d", r.errno)
		}
	}
}
