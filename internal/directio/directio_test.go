package directio

import "testing"

func TestBuf(t *testing.T) {
	for _, n := range []int{0, 1, 511, 4096, 1 << 20, 1<<20 + 17} {
		b := Buf(n)
		if len(b) != n || cap(b) != n {
			t.Errorf("Buf(%d): len %d cap %d", n, len(b), cap(b))
		}
		if n > 0 && !Aligned(b) {
			t.Errorf("Buf(%d) is not aligned", n)
		}
	}
}

func TestUp(t *testing.T) {
	for _, c := range []struct{ in, want int64 }{{0, 0}, {1, 4096}, {4096, 4096}, {4097, 8192}, {1 << 20, 1 << 20}} {
		if got := Up(c.in); got != c.want {
			t.Errorf("Up(%d) = %d, want %d", c.in, got, c.want)
		}
	}
}
