package nbd

// Protocol constants, named as in the NBD specification (doc/proto.md).

const (
	nbdMagic       = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic       = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic  = 0x0003e889045565a9
	requestMagic   = 0x25609513
	simpleMagic    = 0x67446698
	structReplyMag = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	clientFlagFixedNewstyle = 1 << 0
	clientFlagNoZeroes      = 1 << 1
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4

	repFlagError    = 1 << 31
	repErrUnsup     = repFlagError | 1
	repErrPolicy    = repFlagError | 2
	repErrInvalid   = repFlagError | 3
	repErrTLSReqd   = repFlagError | 5
	repErrUnknown   = repFlagError | 6
	repErrShutdown  = repFlagError | 7
	repErrTooBig    = repFlagError | 9
	repErrPlatform  = repFlagError | 4
	repErrBlockSize = repFlagError | 8
)

// Information types for NBD_OPT_INFO and NBD_OPT_GO.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Transmission flags.
const (
	tflagHasFlags     = 1 << 0
	tflagReadOnly     = 1 << 1
	tflagSendFlush    = 1 << 2
	tflagCanMultiConn = 1 << 8
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
	cmdResize      = 8
)

// Command flags.
const (
	cmdFlagReqOne = 1 << 3
)

// Structured reply flags and types.
const (
	replyFlagDone = 1 << 0

	replyTypeOffsetData  = 1
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 + 1
)

// Error values carried in replies (Linux errno numbers, as the spec fixes).
const (
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errShutdown = 108
)

// base:allocation states and our only metadata context.
const (
	stateHole = 1 << 0
	stateZero = 1 << 1

	metaBaseAllocation   = "base:allocation"
	metaBaseAllocationID = 1
)

// MaxRequestLength is the largest READ the server serves, advertised as the
// maximum block size; larger requests fail with EINVAL.
const MaxRequestLength = 32 << 20

// Limits.
const (
	// maxOptionLength bounds the data of one handshake option. Strings in
	// the protocol are at most 4096 bytes, so real options are far smaller.
	maxOptionLength = 64 << 10
	// maxStringLength is the protocol's limit on names and queries.
	maxStringLength = 4096
	// maxOptions bounds the number of options in one handshake.
	maxOptions = 1024

	preferredBlockSize = 4096

	requestHeaderLen = 28
	optionHeaderLen  = 16
)
