package protocol

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/klauspost/compress/s2"
)

// samples is one of every message, with every field set.
func samples() []Message {
	return []Message{
		&Hello{ProtocolVersion: Version, AgentVersion: "1.2.3", ServerID: "s-abc", Tracker: "ebpf",
			Disks: []HelloDisk{{Name: "sda", Size: 1 << 30, LogicalBlockSize: 512, AckedSeq: 7, SyncCursor: 4 << 20, SyncDone: false},
				{Name: "nvme0n1", Size: 8 << 30, LogicalBlockSize: 4096, AckedSeq: 99, SyncCursor: 8 << 30, SyncDone: true}}},
		&HelloAck{ProtocolVersion: Version, Disks: []AckDisk{{DurableSeq: 7, ReplicaSize: 1 << 30, BlockSize: 4096, SyncCursor: 4 << 20, Rescan: true}}},
		&Write{Disk: 1, Seq: 42, Offset: 8192, Flags: FlagSync, RawLen: 4, Data: []byte("abcd")},
		&Write{Disk: 0, Seq: 43, Offset: 0, Flags: FlagZstd | FlagRescan, RawLen: 4096, Data: []byte{1, 2, 3}},
		&Write{Disk: 0, Seq: 44, Offset: 4096, Flags: FlagS2 | FlagSync, RawLen: 8192, Data: s2.Encode(nil, bytes.Repeat([]byte("ferry "), 8192/6+1)[:8192])},
		&Zero{Disk: 2, Seq: 44, Offset: 1 << 20, Length: 1 << 20, Flags: FlagSync},
		&Barrier{Disk: 1, Seq: 45, Consistency: CrashConsistent},
		&Barrier{Disk: 1, Seq: 45, Consistency: AppConsistent, FlushID: 3},
		&Snapshot{Disk: 1, Seq: 46, Consistency: AppConsistent},
		&Snapshot{Disk: 1, Seq: 46, Consistency: CrashConsistent, Keep: 3},
		&Ack{Disk: 3, Seq: 1 << 40},
		&HashRequest{ID: 9, Disk: 1, Offset: 4096, Length: 16 << 20, BlockSize: 4096, Algo: HashBLAKE3},
		&HashReply{ID: 9, Disk: 1, Offset: 4096, BlockSize: 4096, Algo: HashXXH3, Hashes: bytes.Repeat([]byte{7}, 24)},
		&Resize{Disk: 1, Seq: 47, Size: 2 << 30},
		&Credit{Bytes: 64 << 20},
		&Flush{ID: 7},
		&Flush{ID: 8, Consistency: AppConsistent},
		&Settings{BandwidthBytesPerSec: 10 << 20, Desired: DesiredPause, Disconnect: true},
		&Heartbeat{UnixNano: 1700000000000000000},
		&Stats{SentAtUnixNano: 5, OldestUnsentUnixNano: 3, Disks: []DiskStats{{Phase: PhaseBacklog, ReplicatedBytes: 1, RescannedBytes: 2, BackloggedBytes: 3, SyncDone: true, SyncSeq: 4}}},
		&Stats{SentAtUnixNano: 6, Disks: []DiskStats{{Phase: PhaseContinuous, SyncDone: true}},
			Timing: &AgentTiming{ReadNanos: 1e9, NetworkNanos: 2e9, ThrottleNanos: 3, IdleNanos: 4e9}},
		&Error{Code: ErrCodeStorage, Message: "disk full"},
		&Renew{CSR: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"},
		&Renewed{Certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
		&Renewed{Refusal: "RENEW: certificate request: bad signature"},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, m := range samples() {
		t.Run(m.Type().String(), func(t *testing.T) {
			frame := Append(nil, m)
			r := NewReader(bytes.NewReader(frame))
			got, err := r.Read()
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("got %+v, want %+v", got, m)
			}
			if _, err := r.Read(); err != io.EOF {
				t.Fatalf("after the frame: %v, want EOF", err)
			}
			// Every truncation of the body fails cleanly, except that the
			// trailing payload of WRITE and HASH_REPLY has no length of its own.
			_, open := m.(*Write)
			if _, ok := m.(*HashReply); ok {
				open = true
			}
			// STATS's timing block (revision 2) is optional.
			if st, ok := m.(*Stats); ok && st.Timing != nil {
				open = true
			}
			// FLUSH's consistency and BARRIER's flush id are optional.
			if f, ok := m.(*Flush); ok && f.Consistency != 0 {
				open = true
			}
			if b, ok := m.(*Barrier); ok && b.FlushID != 0 {
				open = true
			}
			if s, ok := m.(*Snapshot); ok && s.Keep != 0 {
				open = true
			}
			for n := 1; n < len(frame)-headerLen; n++ {
				if _, err := Decode(frame[headerLen : headerLen+n]); err == nil && !open {
					t.Fatalf("body truncated to %d bytes decoded", n)
				}
			}
		})
	}
}

// countWriter counts the writes it is given and fails the one numbered
// failAt (from 1; 0 never).
type countWriter struct {
	bytes.Buffer
	writes, failAt int
}

func (w *countWriter) Write(p []byte) (int, error) {
	w.writes++
	if w.writes == w.failAt {
		return 0, errors.New("link down")
	}
	return w.Buffer.Write(p)
}

func TestWriteFrame(t *testing.T) {
	big := &Write{Disk: 1, Seq: 9, Offset: 1 << 20, Flags: FlagSync, RawLen: 1 << 20, Data: bytes.Repeat([]byte{5}, 1<<20)}
	edge := &Write{Disk: 0, Seq: 10, Flags: FlagS2, RawLen: 1 << 20, Data: bytes.Repeat([]byte{6}, directPayload)}
	for _, tt := range []struct {
		name   string
		m      Message
		writes int // how many writes reach the writer
	}{
		{"small WRITE: one write", samples()[2], 1},
		{"control message: one write", &Ack{Disk: 3, Seq: 5}, 1},
		{"payload just under the threshold: copied", &Write{Seq: 1, RawLen: directPayload - 1, Data: make([]byte, directPayload-1)}, 1},
		{"payload at the threshold: passed on", edge, 2},
		{"1 MiB payload: passed on", big, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var w countWriter
			buf, err := WriteFrame(&w, make([]byte, 3, 8), tt.m)
			if err != nil {
				t.Fatal(err)
			}
			if want := Append(nil, tt.m); !bytes.Equal(w.Bytes(), want) {
				t.Fatalf("wrote %d bytes unlike Append's %d", w.Len(), len(want))
			}
			if w.writes != tt.writes {
				t.Errorf("%d writes, want %d", w.writes, tt.writes)
			}
			got, err := NewReader(&w.Buffer).Read()
			if err != nil || !reflect.DeepEqual(got, tt.m) {
				t.Fatalf("read back %+v, %v", got, err)
			}
			// The buffer comes back for reuse: never the payload's storage.
			if wm, ok := tt.m.(*Write); ok && len(buf) > 0 && len(wm.Data) > 0 && &buf[0] == &wm.Data[0] {
				t.Fatal("WriteFrame returned the payload as its buffer")
			}
		})
	}
	for _, failAt := range []int{1, 2} {
		w := countWriter{failAt: failAt}
		if _, err := WriteFrame(&w, nil, big); err == nil || !strings.Contains(err.Error(), "link down") {
			t.Errorf("write %d failing: %v, want the writer's error", failAt, err)
		}
	}
}

func TestDecodeErrorsNameTheProblem(t *testing.T) {
	tests := []struct {
		name string
		body []byte
		want string
	}{
		{"empty", nil, "empty frame"},
		{"unknown type", []byte{200}, "unknown message type 200"},
		{"short ack", []byte{byte(TypeAck), 1}, "ACK: disk"},
		{"trailing", append(Append(nil, &Ack{})[headerLen:], 0), "ACK: end: 1 trailing bytes"},
		{"bad flush consistency", append(Append(nil, &Flush{ID: 1})[headerLen:], 0), "FLUSH: consistency"},
		{"barrier flush id 0", append(Append(nil, &Barrier{Consistency: 1})[headerLen:], 0, 0, 0, 0), "BARRIER: flush id"},
		{"snapshot keep 0", append(Append(nil, &Snapshot{Consistency: 1})[headerLen:], 0, 0, 0, 0), "SNAPSHOT: keep"},
		{"bad barrier", Append(nil, &Barrier{Consistency: 9})[headerLen:], "BARRIER: consistency"},
		{"write raw length", Append(nil, &Write{RawLen: 5, Data: []byte("abcd")})[headerLen:], "WRITE: raw length"},
		{"write two codecs", Append(nil, &Write{Flags: FlagZstd | FlagS2, RawLen: 5, Data: []byte("abcd")})[headerLen:], "WRITE: flags: both ZSTD and S2"},
		{"write unknown flag", Append(nil, &Write{Flags: 1 << 4, RawLen: 4, Data: []byte("abcd")})[headerLen:], "WRITE: flags: unknown flags 0x10"},
		{"lying disk count", []byte{byte(TypeHelloAck), 1, 0, 0xff, 0xff}, "HELLO_ACK: disks: count 65535"},
		{"hash length", Append(nil, &HashRequest{BlockSize: 4096, Length: 1 << 40, Algo: HashBLAKE3})[headerLen:], "HASH_REQUEST: length"},
		{"small credit", Append(nil, &Credit{Bytes: 10})[headerLen:], "CREDIT: bytes"},
		{"stats timing cut short", append(Append(nil, &Stats{})[headerLen:], 1, 2, 3), "STATS: read ns: needs 8 bytes"},
		{"stats timing negative", Append(nil, &Stats{Timing: &AgentTiming{IdleNanos: -1}})[headerLen:], "STATS: idle ns: negative"},
		{"huge csr", Append(nil, &Renew{CSR: strings.Repeat("A", MaxPEM+1)})[headerLen:], "RENEW: csr: 16385 bytes exceeds the limit of 16384"},
		{"renewed with neither", Append(nil, &Renewed{})[headerLen:], "RENEWED: certificate: exactly one"},
		{"renewed with both", Append(nil, &Renewed{Certificate: "c", Refusal: "r"})[headerLen:], "RENEWED: certificate: exactly one"},
		{"csr cut short", Append(nil, &Renew{CSR: "abc"})[headerLen : headerLen+4], "RENEW: csr: needs 3 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.body)
			if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrMalformed containing %q", err, tt.want)
			}
		})
	}
}

func TestReaderRejectsHugeFrame(t *testing.T) {
	r := NewReader(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff, 1}))
	if _, err := r.Read(); err == nil || !strings.Contains(err.Error(), "frame length") {
		t.Fatalf("err = %v", err)
	}
	r = NewReader(bytes.NewReader([]byte{0, 0, 0, 10, 1}))
	if _, err := r.Read(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut frame: %v", err)
	}
}

// TestCompressRoundTrip checks each codec: text compresses and decodes
// back, a raw length that differs from the payload's is malformed, and
// data that does not compress is sent as it is.
func TestCompressRoundTrip(t *testing.T) {
	d, err := NewDecompressor()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	text := bytes.Repeat([]byte("ferry replicates disks "), 4096)
	random := make([]byte, 64<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	for _, codec := range []Codec{Zstd, S2} {
		t.Run(codec.String(), func(t *testing.T) {
			c, err := NewCompressor(codec)
			if err != nil {
				t.Fatal(err)
			}
			if c.Codec() != codec {
				t.Fatalf("compressor's codec %v", c.Codec())
			}
			// A buffer of CompressBound is never replaced.
			buf := make([]byte, 0, CompressBound(len(text)))
			z, ok := c.Compress(text, buf)
			if !ok || len(z) >= len(text)/4 {
				t.Fatalf("text did not compress: %d -> %d", len(text), len(z))
			}
			if &z[0] != &buf[:1][0] {
				t.Error("the payload was not written into the buffer given")
			}
			w := &Write{Flags: codec.Flag(), RawLen: uint32(len(text)), Data: z}
			// The encoded WRITE decodes, and its payload decodes to text.
			m, err := Decode(Append(nil, w)[headerLen:])
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.Payload(m.(*Write), make([]byte, 10))
			if err != nil || !bytes.Equal(got, text) {
				t.Fatalf("payload: %v", err)
			}
			for _, n := range []uint32{w.RawLen + 1, w.RawLen - 1} {
				w.RawLen = n
				if _, err := d.Payload(w, nil); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), codec.String()+" payload") {
					t.Fatalf("raw length %d: %v", n, err)
				}
			}
			w.RawLen, w.Data = uint32(len(text)), z[:len(z)/2]
			if _, err := d.Payload(w, nil); !errors.Is(err, ErrMalformed) {
				t.Fatalf("cut payload: %v", err)
			}
			for _, n := range []int{64, len(random)} {
				if out, ok := c.Compress(random[:n], nil); ok || !bytes.Equal(out, random[:n]) {
					t.Fatalf("%d incompressible bytes were compressed", n)
				}
			}
		})
	}
	if _, err := NewCompressor(9); err == nil {
		t.Fatal("codec 9 accepted")
	}
}

// FuzzDecode feeds arbitrary frames to the decoder: it must never panic,
// and whatever decodes must encode back to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, m := range samples() {
		f.Add(Append(nil, m)[headerLen:])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := Decode(body)
		if err != nil {
			return
		}
		again := Append(nil, m)[headerLen:]
		if !bytes.Equal(again, body) {
			t.Fatalf("%s re-encodes differently:\n%x\n%x", m.Type(), body, again)
		}
		if w, ok := m.(*Write); ok && w.Flags&(FlagZstd|FlagS2) != 0 {
			d, err := NewDecompressor()
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			_, _ = d.Payload(w, nil)
		}
	})
}

// BenchmarkWriteFrame compares sending 1 MiB WRITEs through a 256 KiB
// bufio.Writer (as the agent and the connector do) encoded whole by
// Append with WriteFrame, which passes the payload on as it is.
func BenchmarkWriteFrame(b *testing.B) {
	m := &Write{Disk: 1, Seq: 9, Flags: FlagSync, RawLen: 1 << 20, Data: bytes.Repeat([]byte{5}, 1<<20)}
	b.Run("Append", func(b *testing.B) {
		bw := bufio.NewWriterSize(io.Discard, 256<<10)
		var buf []byte
		b.SetBytes(int64(len(m.Data)))
		for b.Loop() {
			buf = Append(buf[:0], m)
			if _, err := bw.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("WriteFrame", func(b *testing.B) {
		bw := bufio.NewWriterSize(io.Discard, 256<<10)
		var buf []byte
		var err error
		b.SetBytes(int64(len(m.Data)))
		for b.Loop() {
			if buf, err = WriteFrame(bw, buf, m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
