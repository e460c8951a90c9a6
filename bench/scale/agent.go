package scale

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymigrate/ferry/api"
	"github.com/ferrymigrate/ferry/pki"
	"github.com/ferrymigrate/ferry/protocol"
)

// Timing of the simulated agent, as `ferry agent` does it.
const (
	statsEvery   = time.Second
	barrierEvery = time.Second
	readTimeout  = 30 * time.Second
	syncChunk    = 1 << 20
	diskName     = "vda"
	blockSize    = 4096
)

// fleet is what every simulated agent of a run shares.
type fleet struct {
	o        Options
	apiURL   string
	pin      []byte
	install  string
	acks     recorder
	random   []byte // 1 MiB of random bytes written data is cut from
	image    []byte // the start of every disk that is shared (an OS image)
	compPool sync.Pool

	connected   atomic.Int64 // sessions past HELLO_ACK now
	synced      atomic.Int64 // agents whose initial sync is acknowledged
	writes      atomic.Int64 // WRITEs sent after the initial sync
	creditWaits atomic.Int64 // writes skipped because credit was used up
	sessionErrs atomic.Int64
	errMu       sync.Mutex
	firstErrs   []string
}

func (f *fleet) fail(err error) {
	f.sessionErrs.Add(1)
	f.errMu.Lock()
	if len(f.firstErrs) < 5 {
		f.firstErrs = append(f.firstErrs, err.Error())
	}
	f.errMu.Unlock()
}

// simAgent is one simulated agent: a paired identity and, once
// connected, a data-plane session over a virtual disk.
type simAgent struct {
	f        *fleet
	idx      int
	serverID string
	tlsConf  *tls.Config
	dataAddr string

	conn net.Conn
	wmu  sync.Mutex // serialises frames on conn
	bw   *bufio.Writer
	wbuf []byte

	mu        sync.Mutex
	acked     uint64 // guarded by mu
	ackedCh   chan struct{}
	inflight  []flight // writes awaiting their ACK; guarded by mu
	inflightB int64    // guarded by mu
	credit    int64    // guarded by mu
	paused    bool     // guarded by mu
	ended     error    // guarded by mu: why the reader stopped
	nextSeq   uint64   // the writer's
	syncSeq   uint64
	syncDone  bool
	logAt     int64 // the writer's next append in the log region
	writesN   int   // the writer's count of writes
}

// Regions of PatternLog: a log in the second half of the disk (at most
// 8 MiB, appended and wrapped) and file-system metadata in its second MiB.
const (
	logRegion  = 8 << 20
	metaOffset = 1 << 20
	metaRegion = 1 << 20
)

// offset picks where a write of n bytes lands (n ≤ half the disk, a
// multiple of 4 KiB).
func (a *simAgent) offset(rng *rand.Rand, n int64) int64 {
	size := a.f.o.DiskBytes
	if a.f.o.Pattern == PatternRandom {
		return rng.Int64N((size-n)/blockSize+1) * blockSize
	}
	a.writesN++
	if a.writesN%4 == 0 && n <= metaRegion {
		return metaOffset + rng.Int64N((metaRegion-n)/blockSize+1)*blockSize
	}
	start := size / 2
	region := min(int64(logRegion), size-start)
	if a.logAt+n > region {
		a.logAt = 0
	}
	off := start + a.logAt
	a.logAt += n
	return off
}

type flight struct {
	seq   uint64
	at    time.Time
	bytes int64
}

// pair makes the agent's key and CSR and pairs it with the install token,
// as `ferry agent` does on first start.
func (a *simAgent) pair(ctx context.Context) error {
	host := fmt.Sprintf("sim-%05d", a.idx)
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(host)
	if err != nil {
		return err
	}
	c, err := api.NewClient(a.f.apiURL, "", pki.ClientTLSConfig(a.f.pin, nil))
	if err != nil {
		return err
	}
	// A real agent's pairing connection ends with its first start; do not
	// leave it open on the server.
	defer c.CloseIdleConnections()
	resp, err := c.Pair(ctx, &api.PairRequest{
		InstallToken: a.f.install, MachineID: fmt.Sprintf("ferry-scale-%05d", a.idx), Hostname: host,
		OS: "Linux (simulated)", Kernel: "6.1.0-sim", CPUs: 2, RAMBytes: 4 << 30,
		Disks:        []api.PairDisk{{Name: diskName, SizeBytes: a.f.o.DiskBytes, LogicalBlockSize: 512, Model: "virtual"}},
		AgentVersion: "scale-sim", CSR: string(csrPEM),
	})
	if err != nil {
		return fmt.Errorf("pair: %w", err)
	}
	cert, err := tls.X509KeyPair([]byte(resp.Certificate), keyPEM)
	if err != nil {
		return fmt.Errorf("pair: the certificate does not match the key: %w", err)
	}
	if a.tlsConf, err = pki.ClientTLSConfigWithCA([]byte(resp.CACertificate), &cert); err != nil {
		return err
	}
	a.serverID, a.dataAddr = resp.SourceServerID, resp.DataPlaneAddress
	return nil
}

// send writes one frame.
func (a *simAgent) send(m protocol.Message) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	return a.sendLocked(m)
}

func (a *simAgent) sendLocked(m protocol.Message) error {
	a.wbuf = protocol.Append(a.wbuf[:0], m)
	_ = a.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := a.bw.Write(a.wbuf); err != nil {
		return fmt.Errorf("send %s: %w", m.Type(), err)
	}
	if err := a.bw.Flush(); err != nil {
		return fmt.Errorf("send %s: %w", m.Type(), err)
	}
	return nil
}

// record sends the record build makes with the next sequence number:
// numbering and sending under one lock keeps the numbers in order on the
// wire. It returns the number.
func (a *simAgent) record(build func(seq uint64) protocol.Message) (uint64, error) {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	seq := a.nextSeq
	a.nextSeq++
	return seq, a.sendLocked(build(seq))
}

// connect opens the data-plane session from source address src and says
// HELLO; it returns once HELLO_ACK arrived, with the reader running.
func (a *simAgent) connect(ctx context.Context, src net.IP) error {
	d := net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: src}}
	raw, err := d.DialContext(ctx, "tcp", a.dataAddr)
	if err != nil {
		return fmt.Errorf("dial the data plane: %w", err)
	}
	c := tls.Client(raw, a.tlsConf)
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = c.HandshakeContext(hctx)
	cancel()
	if err != nil {
		raw.Close()
		return fmt.Errorf("data plane TLS handshake: %w", err)
	}
	a.conn, a.bw = c, bufio.NewWriterSize(c, 16<<10)
	a.ackedCh = make(chan struct{}, 1)
	err = a.send(&protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "scale-sim", ServerID: a.serverID, Tracker: "sim",
		Disks: []protocol.HelloDisk{{Name: diskName, Size: a.f.o.DiskBytes, LogicalBlockSize: 512}}})
	if err != nil {
		c.Close()
		return err
	}
	r := protocol.NewReaderSize(c, 4<<10)
	_ = c.SetReadDeadline(time.Now().Add(readTimeout))
	m, err := r.Read()
	if err != nil {
		c.Close()
		return fmt.Errorf("read HELLO_ACK: %w", err)
	}
	ack, ok := m.(*protocol.HelloAck)
	if !ok {
		c.Close()
		return fmt.Errorf("first message is %s, want HELLO_ACK", m.Type())
	}
	if len(ack.Disks) != 1 || ack.Disks[0].BlockSize != blockSize || ack.Disks[0].ReplicaSize != a.f.o.DiskBytes {
		c.Close()
		return fmt.Errorf("HELLO_ACK: unexpected disk %+v", ack.Disks)
	}
	if ack.Disks[0].DurableSeq != 0 {
		c.Close()
		return fmt.Errorf("HELLO_ACK: a new replica holds seq %d", ack.Disks[0].DurableSeq)
	}
	a.nextSeq = 1
	a.credit = protocol.MaxFrame
	a.f.connected.Add(1)
	go a.readLoop(r)
	return nil
}

// readLoop handles the server's messages until the connection ends.
func (a *simAgent) readLoop(r *protocol.Reader) {
	defer a.f.connected.Add(-1)
	for {
		_ = a.conn.SetReadDeadline(time.Now().Add(readTimeout))
		m, err := r.Read()
		if err != nil {
			a.end(fmt.Errorf("read from server: %w", err))
			return
		}
		switch m := m.(type) {
		case *protocol.Ack:
			now := time.Now()
			a.mu.Lock()
			if m.Seq > a.acked {
				a.acked = m.Seq
			}
			n := 0
			for _, fl := range a.inflight {
				if fl.seq > m.Seq {
					break
				}
				a.f.acks.add(now.Sub(fl.at))
				a.inflightB -= fl.bytes
				n++
			}
			a.inflight = a.inflight[:copy(a.inflight, a.inflight[n:])]
			a.mu.Unlock()
			select {
			case a.ackedCh <- struct{}{}:
			default:
			}
		case *protocol.Credit:
			a.mu.Lock()
			a.credit = m.Bytes
			a.mu.Unlock()
		case *protocol.Settings:
			a.mu.Lock()
			a.paused = m.Desired != protocol.DesiredRun
			a.mu.Unlock()
			if m.Disconnect {
				a.end(errors.New("the server disconnected this agent"))
				return
			}
		case *protocol.Flush:
			// Nothing waits on a virtual disk: the drained point is here.
			_, err := a.record(func(seq uint64) protocol.Message {
				return &protocol.Barrier{Disk: 0, Seq: seq, Consistency: protocol.CrashConsistent, FlushID: m.ID}
			})
			if err != nil {
				a.end(err)
				return
			}
		case *protocol.Heartbeat, *protocol.HashReply:
		case *protocol.Error:
			a.end(fmt.Errorf("server: %w", m))
			return
		default:
			a.end(fmt.Errorf("unexpected %s from the server", m.Type()))
			return
		}
	}
}

// end records why the session ended (the first reason) and closes it.
func (a *simAgent) end(err error) {
	a.mu.Lock()
	first := a.ended == nil
	if first {
		a.ended = err
	}
	a.mu.Unlock()
	a.conn.Close()
	select {
	case a.ackedCh <- struct{}{}:
	default:
	}
}

func (a *simAgent) endedErr() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ended
}

// stats sends STATS as `ferry agent` does.
func (a *simAgent) stats() error {
	ds := protocol.DiskStats{Phase: protocol.PhaseInitialSync}
	if a.syncDone {
		ds = protocol.DiskStats{Phase: protocol.PhaseContinuous, ReplicatedBytes: a.f.o.DiskBytes, SyncDone: true, SyncSeq: a.syncSeq}
	}
	return a.send(&protocol.Stats{SentAtUnixNano: time.Now().UnixNano(), Disks: []protocol.DiskStats{ds}})
}

// initialSync sends the virtual disk: its data (the first DataBytes, a
// shared image with this agent's own blocks in it) in one WRITE,
// compressed when that pays, ZERO for every all-zero chunk, then the
// SNAPSHOT that ends the sync; it returns once that is acknowledged.
func (a *simAgent) initialSync(ctx context.Context) error {
	if err := a.stats(); err != nil {
		return err
	}
	data := make([]byte, a.f.o.DataBytes)
	copy(data, a.f.image)
	// A quarter of the data is this agent's own (host keys, logs, ...).
	own := data[len(data)*3/4:]
	rng := rand.New(rand.NewPCG(uint64(a.idx), 7))
	for i := 0; i+8 <= len(own); i += 8 {
		binary.LittleEndian.PutUint64(own[i:], rng.Uint64())
	}
	comp := a.f.compPool.Get().(*protocol.Compressor)
	payload, zipped := comp.Compress(data, nil)
	a.f.compPool.Put(comp)
	flags := protocol.FlagSync
	if zipped {
		flags |= comp.Codec().Flag()
	}
	_, err := a.record(func(seq uint64) protocol.Message {
		return &protocol.Write{Disk: 0, Seq: seq, Offset: 0, Flags: flags, RawLen: uint32(len(data)), Data: payload}
	})
	if err != nil {
		return err
	}
	zero := func(off, n int64) error {
		_, err := a.record(func(seq uint64) protocol.Message {
			return &protocol.Zero{Disk: 0, Seq: seq, Offset: off, Length: n, Flags: protocol.FlagSync}
		})
		return err
	}
	off := a.f.o.DataBytes
	if rest := syncChunk - off%syncChunk; rest != syncChunk {
		if err := zero(off, rest); err != nil {
			return err
		}
		off += rest
	}
	for ; off < a.f.o.DiskBytes; off += syncChunk {
		if err := zero(off, min(int64(syncChunk), a.f.o.DiskBytes-off)); err != nil {
			return err
		}
	}
	a.syncSeq, err = a.record(func(seq uint64) protocol.Message {
		return &protocol.Snapshot{Disk: 0, Seq: seq, Consistency: protocol.CrashConsistent}
	})
	if err != nil {
		return err
	}
	deadline := time.NewTimer(5 * time.Minute)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		acked := a.acked
		a.mu.Unlock()
		if acked >= a.syncSeq {
			break
		}
		if err := a.endedErr(); err != nil {
			return fmt.Errorf("initial sync: %w", err)
		}
		select {
		case <-a.ackedCh:
		case <-deadline.C:
			return fmt.Errorf("initial sync: seq %d not acknowledged within 5 min (acked %d)", a.syncSeq, acked)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	a.syncDone = true
	a.f.synced.Add(1)
	return a.stats()
}

// run replicates the virtual disk's writes until ctx ends: writes of
// MinWrite..MaxWrite bytes at random 4 KiB-aligned offsets, at
// WriteBytesPerSec on average (exponential gaps), a barrier a second
// after the last unbarriered write, STATS every second and a heartbeat
// every 5 s.
func (a *simAgent) run(ctx context.Context) {
	defer a.conn.Close()
	rng := rand.New(rand.NewPCG(uint64(a.idx), 11))
	o := a.f.o
	now := time.Now()
	// Spread the agents' ticks over the second.
	nextStats := now.Add(time.Duration(rng.Int64N(int64(statsEvery))))
	nextBeat := now.Add(time.Duration(rng.Int64N(int64(protocol.HeartbeatEvery))))
	size := int64(o.MinWrite/blockSize+rng.IntN((o.MaxWrite-o.MinWrite)/blockSize+1)) * blockSize
	gap := func(n int64) time.Duration {
		return time.Duration(rng.ExpFloat64() * float64(n) / float64(o.WriteBytesPerSec) * float64(time.Second))
	}
	nextWrite := now.Add(gap(size))
	var lastSent, barrierSeq uint64
	var lastWriteAt time.Time
	buf := make([]byte, o.MaxWrite)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if err := a.endedErr(); err != nil {
			if ctx.Err() == nil {
				a.f.fail(fmt.Errorf("%s: %w", a.serverID, err))
			}
			return
		}
		now = time.Now()
		var err error
		switch {
		case !now.Before(nextWrite):
			var seq uint64
			if seq, err = a.write(rng, buf[:size]); err == nil && seq != 0 {
				lastSent, lastWriteAt = seq, now
			}
			size = int64(o.MinWrite/blockSize+rng.IntN((o.MaxWrite-o.MinWrite)/blockSize+1)) * blockSize
			nextWrite = now.Add(gap(size))
		case lastSent > barrierSeq && now.Sub(lastWriteAt) >= barrierEvery:
			barrierSeq, err = a.record(func(seq uint64) protocol.Message {
				return &protocol.Barrier{Disk: 0, Seq: seq, Consistency: protocol.CrashConsistent}
			})
			lastSent = barrierSeq
		case !now.Before(nextStats):
			err = a.stats()
			nextStats = nextStats.Add(statsEvery)
		case !now.Before(nextBeat):
			err = a.send(&protocol.Heartbeat{UnixNano: now.UnixNano()})
			nextBeat = nextBeat.Add(protocol.HeartbeatEvery)
		default:
			wake := earliest(nextWrite, nextStats, nextBeat)
			if lastSent > barrierSeq {
				wake = earliest(wake, lastWriteAt.Add(barrierEvery))
			}
			timer.Reset(time.Until(wake))
			select {
			case <-ctx.Done():
				return
			case <-a.ackedCh:
				// An ended session wakes the loop through ackedCh too.
				if !timer.Stop() {
					<-timer.C
				}
			case <-timer.C:
			}
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				a.f.fail(fmt.Errorf("%s: %w", a.serverID, err))
			}
			return
		}
	}
}

// write sends one WRITE of random data (so it is sent raw, as an agent
// sends incompressible blocks) and notes it in flight. It returns the
// record's sequence number, 0 when the write had to wait (paused, or the
// credit is used up).
func (a *simAgent) write(rng *rand.Rand, data []byte) (uint64, error) {
	a.mu.Lock()
	if a.paused || (a.inflightB > 0 && a.inflightB+int64(len(data)) > a.credit) {
		a.mu.Unlock()
		a.f.creditWaits.Add(1)
		return 0, nil
	}
	a.mu.Unlock()
	at := rng.IntN(len(a.f.random) - len(data))
	copy(data, a.f.random[at:])
	binary.LittleEndian.PutUint64(data, rng.Uint64())
	off := a.offset(rng, int64(len(data)))
	seq, err := a.record(func(seq uint64) protocol.Message {
		// In flight from just before the frame goes out: the ACK may come
		// back before the send returns.
		a.mu.Lock()
		a.inflight = append(a.inflight, flight{seq: seq, at: time.Now(), bytes: int64(len(data))})
		a.inflightB += int64(len(data))
		a.mu.Unlock()
		return &protocol.Write{Disk: 0, Seq: seq, Offset: off, RawLen: uint32(len(data)), Data: data}
	})
	if err != nil {
		return 0, err
	}
	a.f.writes.Add(1)
	return seq, nil
}

func earliest(t time.Time, ts ...time.Time) time.Time {
	for _, x := range ts {
		if x.Before(t) {
			t = x
		}
	}
	return t
}
