package zeros

import "testing"

func TestIs(t *testing.T) {
	big := make([]byte, 3*len(buf)+5)
	cases := []struct {
		name string
		b    []byte
		set  int // index to make non-zero, -1 for none
		want bool
	}{
		{"empty", nil, -1, true},
		{"one zero", make([]byte, 1), -1, true},
		{"one byte", make([]byte, 1), 0, false},
		{"odd length zero", make([]byte, 4099), -1, true},
		{"last byte", make([]byte, 4099), 4098, false},
		{"longer than the buffer", big, -1, true},
		{"past the first buffer", big, len(buf) + 1, false},
		{"very last", big, len(big) - 1, false},
	}
	for _, c := range cases {
		b := append([]byte(nil), c.b...)
		if c.set >= 0 {
			b[c.set] = 1
		}
		if got := Is(b); got != c.want {
			t.Errorf("%s: Is = %v, want %v", c.name, got, c.want)
		}
	}
}

func BenchmarkIs(b *testing.B) {
	z := make([]byte, 1<<20)
	b.SetBytes(int64(len(z)))
	for b.Loop() {
		if !Is(z) {
			b.Fatal("not zero")
		}
	}
}
