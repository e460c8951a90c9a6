package protocol

import (
	"fmt"
	"time"
)

// Version is the protocol version this package speaks.
const Version = 1

// Revisions of version 1: additions a peer may use only when the other
// side decodes them. The server states its revision in HELLO_ACK's version
// field (agents before revision 2 ignore that field); HELLO's version
// stays Version.
const (
	// RevisionBase is version 1 as first released.
	RevisionBase = 1
	// RevisionStatsTiming adds the agent's timing block to STATS.
	RevisionStatsTiming = 2
	// RevisionS2 adds WRITE payloads compressed with S2 (FlagS2).
	RevisionS2 = 3
	// RevisionRenew adds RENEW and RENEWED: an agent renews its
	// certificate over its session.
	RevisionRenew = 4
	// Revision is the newest revision this package speaks.
	Revision = RevisionRenew
)

// Limits the decoder enforces.
const (
	// MaxPayload is the largest data payload of a WRITE (and the largest
	// uncompressed size of a compressed one).
	MaxPayload = 8 << 20
	// MaxFrame is the largest frame body (type byte included).
	MaxFrame = MaxPayload + 1024
	// MaxDisks is the most disks one HELLO may announce.
	MaxDisks = 256
	// MaxName is the longest disk name, server id, version or tracker name.
	MaxName = 255
	// MaxErrorText is the longest ERROR message.
	MaxErrorText = 4096
	// MaxPEM is the longest certificate request or certificate (PEM) in
	// RENEW and RENEWED.
	MaxPEM = 16 << 10
)

// Type identifies a message.
type Type uint8

// Message types. The direction is in each message's doc comment.
const (
	TypeHello       Type = 1
	TypeHelloAck    Type = 2
	TypeWrite       Type = 3
	TypeZero        Type = 4
	TypeBarrier     Type = 5
	TypeSnapshot    Type = 6
	TypeAck         Type = 7
	TypeHashRequest Type = 8
	TypeHashReply   Type = 9
	TypeResize      Type = 10
	TypeCredit      Type = 11
	TypeSettings    Type = 12
	TypeHeartbeat   Type = 13
	TypeStats       Type = 14
	TypeError       Type = 15
	TypeFlush       Type = 16
	TypeRenew       Type = 17
	TypeRenewed     Type = 18
)

var typeNames = map[Type]string{
	TypeHello: "HELLO", TypeHelloAck: "HELLO_ACK", TypeWrite: "WRITE", TypeZero: "ZERO",
	TypeBarrier: "BARRIER", TypeSnapshot: "SNAPSHOT", TypeAck: "ACK", TypeHashRequest: "HASH_REQUEST",
	TypeHashReply: "HASH_REPLY", TypeResize: "RESIZE", TypeCredit: "CREDIT", TypeSettings: "SETTINGS",
	TypeHeartbeat: "HEARTBEAT", TypeStats: "STATS", TypeError: "ERROR", TypeFlush: "FLUSH",
	TypeRenew: "RENEW", TypeRenewed: "RENEWED",
}

// String returns the message type's name, e.g. "WRITE".
func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Message is one protocol message.
type Message interface {
	// Type returns the message's type byte.
	Type() Type
	appendBody(e *enc)
	decodeBody(d *dec)
}

func newMessage(t Type) Message {
	switch t {
	case TypeHello:
		return &Hello{}
	case TypeHelloAck:
		return &HelloAck{}
	case TypeWrite:
		return &Write{}
	case TypeZero:
		return &Zero{}
	case TypeBarrier:
		return &Barrier{}
	case TypeSnapshot:
		return &Snapshot{}
	case TypeAck:
		return &Ack{}
	case TypeHashRequest:
		return &HashRequest{}
	case TypeHashReply:
		return &HashReply{}
	case TypeResize:
		return &Resize{}
	case TypeCredit:
		return &Credit{}
	case TypeFlush:
		return &Flush{}
	case TypeSettings:
		return &Settings{}
	case TypeHeartbeat:
		return &Heartbeat{}
	case TypeStats:
		return &Stats{}
	case TypeError:
		return &Error{}
	case TypeRenew:
		return &Renew{}
	case TypeRenewed:
		return &Renewed{}
	}
	return nil
}

// HelloDisk is one disk in a HELLO: its layout and where the agent
// believes replication stands.
type HelloDisk struct {
	// Name is the device's kernel name (e.g. "sdb"), at most MaxName bytes.
	Name string
	// Size is the device size in bytes.
	Size int64
	// LogicalBlockSize is the device's logical block size in bytes.
	LogicalBlockSize uint32
	// AckedSeq is the highest sequence number the agent saw acknowledged
	// (0: none, a fresh start).
	AckedSeq uint64
	// SyncCursor is the offset below which the initial sync is durable.
	SyncCursor int64
	// SyncDone says the initial sync of the disk completed.
	SyncDone bool
}

// Hello (agent → server) opens a session: versions, the source server id
// (which must match the certificate) and the disks with their resume
// points.
type Hello struct {
	ProtocolVersion uint16
	AgentVersion    string
	ServerID        string
	Tracker         string
	Disks           []HelloDisk
}

// Type implements Message.
func (*Hello) Type() Type { return TypeHello }

func (m *Hello) appendBody(e *enc) {
	e.u16(m.ProtocolVersion)
	e.str(m.AgentVersion)
	e.str(m.ServerID)
	e.str(m.Tracker)
	e.u16(uint16(len(m.Disks)))
	for _, d := range m.Disks {
		e.str(d.Name)
		e.i64(d.Size)
		e.u32(d.LogicalBlockSize)
		e.u64(d.AckedSeq)
		e.i64(d.SyncCursor)
		e.bool(d.SyncDone)
	}
}

func (m *Hello) decodeBody(d *dec) {
	m.ProtocolVersion = d.u16("protocol version")
	m.AgentVersion = d.str("agent version", MaxName)
	m.ServerID = d.str("server id", MaxName)
	m.Tracker = d.str("tracker", MaxName)
	n := d.count("disks", 2+8+4+8+8+1)
	if n > MaxDisks {
		d.fail("disks", fmt.Sprintf("%d disks exceeds %d", n, MaxDisks))
		return
	}
	if n > 0 {
		m.Disks = make([]HelloDisk, n)
	}
	for i := range m.Disks {
		x := &m.Disks[i]
		x.Name = d.str("disk name", MaxName)
		x.Size = d.nonneg("disk size")
		x.LogicalBlockSize = d.u32("logical block size")
		x.AckedSeq = d.u64("acked seq")
		x.SyncCursor = d.nonneg("sync cursor")
		x.SyncDone = d.bool("sync done")
	}
}

// AckDisk is the server's answer for one disk of a HELLO, in the same order.
type AckDisk struct {
	// DurableSeq is the replica's durable sequence number: the agent
	// numbers its next record DurableSeq+1 and treats everything it sent
	// up to DurableSeq as acknowledged.
	DurableSeq uint64
	// ReplicaSize is the replica's size; a smaller one than the device
	// means the agent must send RESIZE first.
	ReplicaSize int64
	// BlockSize is the replica's block size: every WRITE and ZERO offset
	// and length must be a multiple of it.
	BlockSize uint32
	// SyncCursor is where the initial sync resumes.
	SyncCursor int64
	// Rescan tells the agent that the replica cannot vouch for what the
	// agent believes was acknowledged: it must compare hashes of the whole
	// disk (up to SyncCursor) and send the differences.
	Rescan bool
}

// HelloAck (server → agent) answers a HELLO.
type HelloAck struct {
	ProtocolVersion uint16
	Disks           []AckDisk
}

// Type implements Message.
func (*HelloAck) Type() Type { return TypeHelloAck }

func (m *HelloAck) appendBody(e *enc) {
	e.u16(m.ProtocolVersion)
	e.u16(uint16(len(m.Disks)))
	for _, d := range m.Disks {
		e.u64(d.DurableSeq)
		e.i64(d.ReplicaSize)
		e.u32(d.BlockSize)
		e.i64(d.SyncCursor)
		e.bool(d.Rescan)
	}
}

func (m *HelloAck) decodeBody(d *dec) {
	m.ProtocolVersion = d.u16("protocol version")
	n := d.count("disks", 8+8+4+8+1)
	if n > MaxDisks {
		d.fail("disks", fmt.Sprintf("%d disks exceeds %d", n, MaxDisks))
		return
	}
	if n > 0 {
		m.Disks = make([]AckDisk, n)
	}
	for i := range m.Disks {
		x := &m.Disks[i]
		x.DurableSeq = d.u64("durable seq")
		x.ReplicaSize = d.nonneg("replica size")
		x.BlockSize = d.u32("block size")
		x.SyncCursor = d.nonneg("sync cursor")
		x.Rescan = d.bool("rescan")
	}
}

// Write flags.
const (
	// FlagZstd: Data is a zstd frame of RawLen bytes.
	FlagZstd uint8 = 1 << 0
	// FlagSync: the extent is part of the initial sync.
	FlagSync uint8 = 1 << 1
	// FlagRescan: the extent was found different by a rescan.
	FlagRescan uint8 = 1 << 2
	// FlagS2: Data is an S2 block of RawLen bytes (RevisionS2).
	FlagS2     uint8 = 1 << 3
	flagsKnown       = FlagZstd | FlagSync | FlagRescan | FlagS2
	flagsCodec       = FlagZstd | FlagS2
)

// Write (agent → server) carries data for [Offset, Offset+RawLen) of a disk.
type Write struct {
	Disk   uint16
	Seq    uint64
	Offset int64
	Flags  uint8
	// RawLen is the data's length once decompressed; equal to len(Data)
	// without FlagZstd or FlagS2.
	RawLen uint32
	// Data is the payload, compressed when Flags has FlagZstd or FlagS2.
	Data []byte
}

// Type implements Message.
func (*Write) Type() Type { return TypeWrite }

func (m *Write) appendBody(e *enc) {
	m.appendFields(e)
	e.b = append(e.b, m.Data...)
}

// appendFields appends the body up to the payload.
func (m *Write) appendFields(e *enc) {
	e.u16(m.Disk)
	e.u64(m.Seq)
	e.i64(m.Offset)
	e.u8(m.Flags)
	e.u32(m.RawLen)
}

func (m *Write) decodeBody(d *dec) {
	m.Disk = d.u16("disk")
	m.Seq = d.u64("seq")
	m.Offset = d.nonneg("offset")
	m.Flags = d.u8("flags")
	m.RawLen = d.u32("raw length")
	m.Data = d.rest()
	if d.err != nil {
		return
	}
	switch {
	case m.Flags&^flagsKnown != 0:
		d.fail("flags", fmt.Sprintf("unknown flags %#x", m.Flags&^flagsKnown))
	case m.RawLen == 0 || m.RawLen > MaxPayload:
		d.fail("raw length", fmt.Sprintf("%d is not in 1..%d", m.RawLen, MaxPayload))
	case m.Flags&flagsCodec == flagsCodec:
		d.fail("flags", "both ZSTD and S2 set")
	case m.Flags&flagsCodec == 0 && int(m.RawLen) != len(m.Data):
		d.fail("raw length", fmt.Sprintf("%d differs from the %d uncompressed bytes", m.RawLen, len(m.Data)))
	}
}

// Zero (agent → server) says [Offset, Offset+Length) of a disk reads as zeros.
type Zero struct {
	Disk   uint16
	Seq    uint64
	Offset int64
	Length int64
	Flags  uint8
}

// Type implements Message.
func (*Zero) Type() Type { return TypeZero }

func (m *Zero) appendBody(e *enc) {
	e.u16(m.Disk)
	e.u64(m.Seq)
	e.i64(m.Offset)
	e.i64(m.Length)
	e.u8(m.Flags)
}

func (m *Zero) decodeBody(d *dec) {
	m.Disk = d.u16("disk")
	m.Seq = d.u64("seq")
	m.Offset = d.nonneg("offset")
	m.Length = d.nonneg("length")
	m.Flags = d.u8("flags")
	if d.err == nil && m.Flags&^flagsKnown != 0 {
		d.fail("flags", fmt.Sprintf("unknown flags %#x", m.Flags&^flagsKnown))
	}
}

// Consistency levels of BARRIER and SNAPSHOT.
const (
	CrashConsistent uint8 = 1
	AppConsistent   uint8 = 2
)

// Barrier (agent → server) marks a consistency point after every record
// with a lower sequence number.
type Barrier struct {
	Disk        uint16
	Seq         uint64
	Consistency uint8
	// FlushID is the ID of the FLUSH this barrier answers; 0 (absent on
	// the wire) for the agent's own periodic barriers.
	FlushID uint32
}

// Type implements Message.
func (*Barrier) Type() Type { return TypeBarrier }

func (m *Barrier) appendBody(e *enc) {
	e.u16(m.Disk)
	e.u64(m.Seq)
	e.u8(m.Consistency)
	if m.FlushID != 0 {
		e.u32(m.FlushID)
	}
}

func (m *Barrier) decodeBody(d *dec) {
	m.Disk = d.u16("disk")
	m.Seq = d.u64("seq")
	m.Consistency = d.u8("consistency")
	if d.err == nil && m.Consistency != CrashConsistent && m.Consistency != AppConsistent {
		d.fail("consistency", fmt.Sprintf("%d is neither crash (1) nor app (2)", m.Consistency))
	}
	if d.err != nil || len(d.b) == 0 {
		return
	}
	m.FlushID = d.u32("flush id")
	if d.err == nil && m.FlushID == 0 {
		d.fail("flush id", "0 is sent as an absent field")
	}
}

// Snapshot (agent → server) asks for a barrier at Seq and a point-in-time
// snapshot there.
type Snapshot struct {
	Disk        uint16
	Seq         uint64
	Consistency uint8
	// Keep, when not 0, asks the server to keep only the Keep newest
	// snapshots of the disk once this one is taken (the connector's
	// "recent snapshots to keep"); snapshots a launched instance uses or
	// marked keep are never deleted. 0 is absent on the wire: no limit,
	// as before the field existed.
	Keep uint32
}

// Type implements Message.
func (*Snapshot) Type() Type { return TypeSnapshot }

func (m *Snapshot) appendBody(e *enc) {
	e.u16(m.Disk)
	e.u64(m.Seq)
	e.u8(m.Consistency)
	if m.Keep != 0 {
		e.u32(m.Keep)
	}
}

func (m *Snapshot) decodeBody(d *dec) {
	m.Disk = d.u16("disk")
	m.Seq = d.u64("seq")
	m.Consistency = d.u8("consistency")
	if d.err == nil && m.Consistency != CrashConsistent && m.Consistency != AppConsistent {
		d.fail("consistency", fmt.Sprintf("%d is neither crash (1) nor app (2)", m.Consistency))
	}
	if d.err != nil || len(d.b) == 0 {
		return
	}
	m.Keep = d.u32("keep")
	if d.err == nil && m.Keep == 0 {
		d.fail("keep", "0 is sent as an absent field")
	}
}

// Ack (server → agent) says every record of a disk up to Seq is durable
// (cumulative).
type Ack struct {
	Disk uint16
	Seq  uint64
}

// Type implements Message.
func (*Ack) Type() Type { return TypeAck }

func (m *Ack) appendBody(e *enc) { e.u16(m.Disk); e.u64(m.Seq) }

func (m *Ack) decodeBody(d *dec) { m.Disk = d.u16("disk"); m.Seq = d.u64("seq") }

// Hash algorithms of HASH_REQUEST and HASH_REPLY.
const (
	HashBLAKE3 uint8 = 1 // BLAKE3-256, 32 bytes per block
	HashXXH3   uint8 = 2 // XXH3-64, 8 bytes per block, little endian
)

// HashLen returns the length of one hash of algorithm a, or 0 if a is unknown.
func HashLen(a uint8) int {
	switch a {
	case HashBLAKE3:
		return 32
	case HashXXH3:
		return 8
	}
	return 0
}

// HashRequest (agent → server) asks for the hashes of the replica's
// current durable head over [Offset, Offset+Length), one per BlockSize
// block. The reply may not exceed MaxPayload bytes of hashes.
type HashRequest struct {
	ID        uint32
	Disk      uint16
	Offset    int64
	Length    int64
	BlockSize uint32
	Algo      uint8
}

// Type implements Message.
func (*HashRequest) Type() Type { return TypeHashRequest }

func (m *HashRequest) appendBody(e *enc) {
	e.u32(m.ID)
	e.u16(m.Disk)
	e.i64(m.Offset)
	e.i64(m.Length)
	e.u32(m.BlockSize)
	e.u8(m.Algo)
}

func (m *HashRequest) decodeBody(d *dec) {
	m.ID = d.u32("id")
	m.Disk = d.u16("disk")
	m.Offset = d.nonneg("offset")
	m.Length = d.nonneg("length")
	m.BlockSize = d.u32("block size")
	m.Algo = d.u8("algorithm")
	if d.err != nil {
		return
	}
	hl := HashLen(m.Algo)
	switch {
	case hl == 0:
		d.fail("algorithm", fmt.Sprintf("unknown hash algorithm %d", m.Algo))
	case m.BlockSize < 512 || m.BlockSize > MaxPayload || m.BlockSize&(m.BlockSize-1) != 0:
		d.fail("block size", fmt.Sprintf("%d is not a power of two from 512 to %d", m.BlockSize, MaxPayload))
	case m.Length%int64(m.BlockSize) != 0:
		d.fail("length", fmt.Sprintf("%d is not a multiple of the block size %d", m.Length, m.BlockSize))
	case m.Length/int64(m.BlockSize)*int64(hl) > MaxPayload:
		d.fail("length", fmt.Sprintf("%d bytes would need more than %d bytes of hashes", m.Length, MaxPayload))
	}
}

// HashReply (server → agent) answers a HashRequest with the same ID: the
// hashes of consecutive blocks from Offset, concatenated.
type HashReply struct {
	ID        uint32
	Disk      uint16
	Offset    int64
	BlockSize uint32
	Algo      uint8
	Hashes    []byte
}

// Type implements Message.
func (*HashReply) Type() Type { return TypeHashReply }

// Count returns the number of hashes in the reply.
func (m *HashReply) Count() int {
	if hl := HashLen(m.Algo); hl > 0 {
		return len(m.Hashes) / hl
	}
	return 0
}

// Hash returns the i-th block's hash.
func (m *HashReply) Hash(i int) []byte {
	hl := HashLen(m.Algo)
	return m.Hashes[i*hl : (i+1)*hl]
}

func (m *HashReply) appendBody(e *enc) {
	e.u32(m.ID)
	e.u16(m.Disk)
	e.i64(m.Offset)
	e.u32(m.BlockSize)
	e.u8(m.Algo)
	e.b = append(e.b, m.Hashes...)
}

func (m *HashReply) decodeBody(d *dec) {
	m.ID = d.u32("id")
	m.Disk = d.u16("disk")
	m.Offset = d.nonneg("offset")
	m.BlockSize = d.u32("block size")
	m.Algo = d.u8("algorithm")
	m.Hashes = d.rest()
	if d.err != nil {
		return
	}
	hl := HashLen(m.Algo)
	switch {
	case hl == 0:
		d.fail("algorithm", fmt.Sprintf("unknown hash algorithm %d", m.Algo))
	case len(m.Hashes)%hl != 0:
		d.fail("hashes", fmt.Sprintf("%d bytes is not a multiple of the %d-byte hash", len(m.Hashes), hl))
	case m.BlockSize < 512 || m.BlockSize&(m.BlockSize-1) != 0:
		d.fail("block size", fmt.Sprintf("%d is not a power of two from 512", m.BlockSize))
	}
}

// Resize (agent → server) grows a disk's replica to Size at Seq.
type Resize struct {
	Disk uint16
	Seq  uint64
	Size int64
}

// Type implements Message.
func (*Resize) Type() Type { return TypeResize }

func (m *Resize) appendBody(e *enc) { e.u16(m.Disk); e.u64(m.Seq); e.i64(m.Size) }

func (m *Resize) decodeBody(d *dec) {
	m.Disk = d.u16("disk")
	m.Seq = d.u64("seq")
	m.Size = d.nonneg("size")
}

// Credit (server → agent) sets how many bytes of WRITE data the agent may
// have sent but not yet seen acknowledged, over all disks.
type Credit struct {
	Bytes int64
}

// Type implements Message.
func (*Credit) Type() Type { return TypeCredit }

func (m *Credit) appendBody(e *enc) { e.i64(m.Bytes) }

func (m *Credit) decodeBody(d *dec) {
	m.Bytes = d.nonneg("bytes")
	if d.err == nil && m.Bytes < MaxFrame {
		d.fail("bytes", fmt.Sprintf("credit %d is less than one frame (%d)", m.Bytes, MaxFrame))
	}
}

// Flush (server → agent) asks for a drained consistency point, as a
// cutover's final sync needs: the agent collects every write that completed
// before it received the FLUSH (with a rescan tracker, by comparing the
// whole disk's hashes with the replica), sends them, and then sends a
// BARRIER for every disk even if nothing changed.
//
// With Consistency AppConsistent the agent first freezes the file systems
// mounted from the replicated disks (FIFREEZE), drains, sends each BARRIER
// as AppConsistent while they are frozen, and thaws; the freeze never lasts
// longer than 2 s, and a disk it could not drain in time gets a
// CrashConsistent barrier instead.
type Flush struct {
	ID uint32
	// Consistency is 0 (absent on the wire: crash-consistent, as before
	// the field existed), CrashConsistent or AppConsistent. It is encoded
	// only when not 0, so agents that predate it read a crash FLUSH.
	Consistency uint8
}

// Type implements Message.
func (*Flush) Type() Type { return TypeFlush }

func (m *Flush) appendBody(e *enc) {
	e.u32(m.ID)
	if m.Consistency != 0 {
		e.u8(m.Consistency)
	}
}

func (m *Flush) decodeBody(d *dec) {
	m.ID = d.u32("id")
	if d.err != nil || len(d.b) == 0 {
		return
	}
	m.Consistency = d.u8("consistency")
	if d.err == nil && m.Consistency != CrashConsistent && m.Consistency != AppConsistent {
		d.fail("consistency", fmt.Sprintf("%d is neither crash (1) nor app (2)", m.Consistency))
	}
}

// App reports whether the FLUSH asks for an app-consistent point.
func (m *Flush) App() bool { return m.Consistency == AppConsistent }

// Desired replication as carried by SETTINGS.
const (
	DesiredRun   uint8 = 0
	DesiredPause uint8 = 1
	DesiredStop  uint8 = 2
)

// Settings (server → agent) are the operator's controls, sent after
// HELLO_ACK and whenever they change.
type Settings struct {
	// BandwidthBytesPerSec caps the agent's sending; 0 means no cap.
	BandwidthBytesPerSec int64
	// Desired is DesiredRun, DesiredPause or DesiredStop.
	Desired uint8
	// Disconnect tells the agent it was disconnected from the service: it
	// stops and removes its state.
	Disconnect bool
}

// Type implements Message.
func (*Settings) Type() Type { return TypeSettings }

func (m *Settings) appendBody(e *enc) {
	e.i64(m.BandwidthBytesPerSec)
	e.u8(m.Desired)
	e.bool(m.Disconnect)
}

func (m *Settings) decodeBody(d *dec) {
	m.BandwidthBytesPerSec = d.nonneg("bandwidth")
	m.Desired = d.u8("desired")
	m.Disconnect = d.bool("disconnect")
	if d.err == nil && m.Desired > DesiredStop {
		d.fail("desired", fmt.Sprintf("unknown value %d", m.Desired))
	}
}

// HeartbeatEvery is how often each side sends a HEARTBEAT when it has
// nothing else to send; a peer silent for several of them is gone.
const HeartbeatEvery = 5 * time.Second

// Heartbeat (both directions) proves the peer is alive.
type Heartbeat struct {
	UnixNano int64
}

// Type implements Message.
func (*Heartbeat) Type() Type { return TypeHeartbeat }

func (m *Heartbeat) appendBody(e *enc) { e.i64(m.UnixNano) }

func (m *Heartbeat) decodeBody(d *dec) { m.UnixNano = d.i64("time") }

// Phase is what the agent is doing for a disk.
type Phase uint8

// Phases, as reported in STATS.
const (
	PhaseInitialSync Phase = 1
	PhaseContinuous  Phase = 2
	PhaseRescan      Phase = 3
	PhaseBacklog     Phase = 4
)

// String returns the phase's name.
func (p Phase) String() string {
	switch p {
	case PhaseInitialSync:
		return "INITIAL_SYNC"
	case PhaseContinuous:
		return "CONTINUOUS"
	case PhaseRescan:
		return "RESCAN"
	case PhaseBacklog:
		return "BACKLOG"
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// DiskStats is one disk's figures in a STATS message.
type DiskStats struct {
	Phase Phase
	// ReplicatedBytes is how much of the disk the initial sync covered.
	ReplicatedBytes int64
	// RescannedBytes is how much the current or last rescan compared.
	RescannedBytes int64
	// BackloggedBytes is the dirty data not yet sent.
	BackloggedBytes int64
	// SyncDone says the initial sync completed, with every record up to
	// SyncSeq; the server checks that SyncSeq is durable before it calls
	// the disk ready.
	SyncDone bool
	SyncSeq  uint64
}

// AgentTiming is where the agent's sender spent its time since the agent
// started, in nanoseconds, cumulative (a restarted agent starts again from
// zero). The server compares two STATS to see what limited the sender over
// that interval.
type AgentTiming struct {
	// ReadNanos is time reading (and compressing) source data, including
	// waiting for the initial sync's parallel readers.
	ReadNanos int64
	// NetworkNanos is time waiting for the server's credit (unacknowledged
	// data at its limit), for a hash reply, or for the connection to take
	// a frame.
	NetworkNanos int64
	// ThrottleNanos is time held back by the bandwidth throttle.
	ThrottleNanos int64
	// IdleNanos is time with nothing to send.
	IdleNanos int64
}

// Stats (agent → server) reports progress, about once a second.
type Stats struct {
	// SentAtUnixNano is the agent's clock when it sent the message.
	SentAtUnixNano int64
	// OldestUnsentUnixNano is when the oldest write not yet sent completed
	// on the source (agent's clock); 0 when nothing is waiting.
	OldestUnsentUnixNano int64
	Disks                []DiskStats
	// Timing is optional (revision 2): nil when absent. An agent sends it
	// only to a server whose HELLO_ACK states revision 2 or later.
	Timing *AgentTiming
}

// Type implements Message.
func (*Stats) Type() Type { return TypeStats }

func (m *Stats) appendBody(e *enc) {
	e.i64(m.SentAtUnixNano)
	e.i64(m.OldestUnsentUnixNano)
	e.u16(uint16(len(m.Disks)))
	for _, d := range m.Disks {
		e.u8(uint8(d.Phase))
		e.i64(d.ReplicatedBytes)
		e.i64(d.RescannedBytes)
		e.i64(d.BackloggedBytes)
		e.bool(d.SyncDone)
		e.u64(d.SyncSeq)
	}
	if t := m.Timing; t != nil {
		e.i64(t.ReadNanos)
		e.i64(t.NetworkNanos)
		e.i64(t.ThrottleNanos)
		e.i64(t.IdleNanos)
	}
}

func (m *Stats) decodeBody(d *dec) {
	m.SentAtUnixNano = d.i64("sent at")
	m.OldestUnsentUnixNano = d.i64("oldest unsent")
	n := d.count("disks", 1+8+8+8+1+8)
	if n > MaxDisks {
		d.fail("disks", fmt.Sprintf("%d disks exceeds %d", n, MaxDisks))
		return
	}
	if n > 0 {
		m.Disks = make([]DiskStats, n)
	}
	for i := range m.Disks {
		x := &m.Disks[i]
		x.Phase = Phase(d.u8("phase"))
		x.ReplicatedBytes = d.nonneg("replicated bytes")
		x.RescannedBytes = d.nonneg("rescanned bytes")
		x.BackloggedBytes = d.nonneg("backlogged bytes")
		x.SyncDone = d.bool("sync done")
		x.SyncSeq = d.u64("sync seq")
		if d.err == nil && (x.Phase < PhaseInitialSync || x.Phase > PhaseBacklog) {
			d.fail("phase", fmt.Sprintf("unknown phase %d", x.Phase))
		}
	}
	if d.err != nil || len(d.b) == 0 {
		return
	}
	m.Timing = &AgentTiming{
		ReadNanos:     d.nonneg("read ns"),
		NetworkNanos:  d.nonneg("network ns"),
		ThrottleNanos: d.nonneg("throttle ns"),
		IdleNanos:     d.nonneg("idle ns"),
	}
	if d.err != nil {
		m.Timing = nil
	}
}

// Error codes.
const (
	ErrCodeProtocol     uint16 = 1 // the peer sent something invalid
	ErrCodeUnauthorized uint16 = 2 // the HELLO's server id is not the certificate's
	ErrCodeStorage      uint16 = 3 // the replica store failed
	ErrCodeVersion      uint16 = 4 // unsupported protocol version
)

// Error (either direction) reports why the sender is closing the session.
type Error struct {
	Code    uint16
	Message string
}

// Type implements Message.
func (*Error) Type() Type { return TypeError }

// Error implements error.
func (m *Error) Error() string { return fmt.Sprintf("peer error %d: %s", m.Code, m.Message) }

func (m *Error) appendBody(e *enc) { e.u16(m.Code); e.str(m.Message) }

func (m *Error) decodeBody(d *dec) {
	m.Code = d.u16("code")
	m.Message = d.str("message", MaxErrorText)
}

// Renew (agent → server, RevisionRenew) asks for a new certificate for the
// session's source server before the one it connected with expires. CSR is
// a PEM certificate request for a new key, at most MaxPEM bytes; the
// server answers with RENEWED, or ends the session with an ERROR.
type Renew struct {
	CSR string
}

// Type implements Message.
func (*Renew) Type() Type { return TypeRenew }

func (m *Renew) appendBody(e *enc) { e.str(m.CSR) }

func (m *Renew) decodeBody(d *dec) { m.CSR = d.str("csr", MaxPEM) }

// Renewed (server → agent, RevisionRenew) answers RENEW: Certificate is
// the PEM certificate issued for the request's key, at most MaxPEM bytes.
// From then on the server accepts it, and the agent's old certificate only
// until the agent has connected with the new one. When the server did not
// renew, Certificate is empty and Refusal says why (at most MaxErrorText
// bytes); the agent keeps its certificate and may ask again later.
type Renewed struct {
	Certificate string
	Refusal     string
}

// Type implements Message.
func (*Renewed) Type() Type { return TypeRenewed }

func (m *Renewed) appendBody(e *enc) { e.str(m.Certificate); e.str(m.Refusal) }

func (m *Renewed) decodeBody(d *dec) {
	m.Certificate = d.str("certificate", MaxPEM)
	m.Refusal = d.str("refusal", MaxErrorText)
	if d.err == nil && (m.Certificate == "") == (m.Refusal == "") {
		d.fail("certificate", "exactly one of a certificate and a refusal is required")
	}
}
