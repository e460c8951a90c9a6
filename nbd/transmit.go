package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sync"
)

// blockStatusCost is what a block status request counts against the
// connection's in-flight budget (its descriptors take at most 512 KiB).
const blockStatusCost = 1 << 20

// maxStatusQuery bounds the range one block status request asks the device
// about; the client asks again for the rest.
const maxStatusQuery = 1 << 30

// transmit serves requests until the client disconnects, the connection
// fails or the server shuts down, then waits for the replies in flight.
func (c *conn) transmit(dev Device) {
	size := dev.Size()
	var wg sync.WaitGroup
	defer wg.Wait()
	var hb [requestHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			switch {
			case c.isStopping():
				c.log.Debug("nbd: connection stopped for shutdown")
			case errors.Is(err, io.EOF), errors.Is(err, os.ErrDeadlineExceeded):
				c.log.Debug("nbd: client closed connection")
			default:
				c.log.Warn("nbd: read request", "err", err)
			}
			return
		}
		req, err := parseRequest(hb[:])
		if err != nil {
			c.log.Warn("nbd: bad request; closing connection", "err", err)
			return
		}
		switch req.typ {
		case cmdRead:
			if errno, msg := checkRange(req, size, MaxRequestLength); errno != 0 {
				if !c.replyError(req, errno, msg) {
					return
				}
				continue
			}
			cost := int64(req.length)
			c.budget.acquire(cost)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.budget.release(cost)
				c.read(dev, req)
			}()
		case cmdBlockStatus:
			if !c.structured || !c.metaAlloc {
				if !c.replyError(req, errInval, "base:allocation was not negotiated") {
					return
				}
				continue
			}
			if errno, msg := checkRange(req, size, 1<<32-1); errno != 0 {
				if !c.replyError(req, errno, msg) {
					return
				}
				continue
			}
			c.budget.acquire(blockStatusCost)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.budget.release(blockStatusCost)
				c.blockStatus(dev, req)
			}()
		case cmdWrite:
			// The payload follows the header and must be consumed even
			// though the write is refused.
			if _, err := io.CopyN(io.Discard, c.br, int64(req.length)); err != nil {
				c.log.Warn("nbd: skip write payload", "err", err)
				return
			}
			if !c.replyError(req, errPerm, "export is read-only") {
				return
			}
		case cmdTrim, cmdWriteZeroes, cmdResize:
			if !c.replyError(req, errPerm, "export is read-only") {
				return
			}
		case cmdFlush:
			if err := c.write(appendSimpleReply(nil, 0, req.handle)); err != nil {
				c.writeFailed(err)
				return
			}
		case cmdDisc:
			c.log.Debug("nbd: client disconnected")
			return
		default:
			if !c.replyError(req, errInval, fmt.Sprintf("command %d is not supported", req.typ)) {
				return
			}
		}
	}
}

// checkRange validates a request's range against the export size and a
// length limit, returning an errno and message for an invalid one.
func checkRange(req request, size int64, maxLen uint32) (uint32, string) {
	switch {
	case req.length == 0:
		return errInval, "zero-length request"
	case req.length > maxLen:
		return errInval, fmt.Sprintf("request of %d bytes exceeds %d", req.length, maxLen)
	case req.offset > uint64(size) || uint64(req.length) > uint64(size)-req.offset:
		return errInval, fmt.Sprintf("request [%d, +%d) is past the end of the %d-byte export", req.offset, req.length, size)
	}
	return 0, ""
}

// read serves one READ request.
func (c *conn) read(dev Device, req request) {
	buf := getBuffer(int(req.length))
	defer putBuffer(buf)
	n, err := dev.ReadAt(buf, int64(req.offset))
	if n == len(buf) {
		err = nil
	} else if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		c.log.Error("nbd: read device", "offset", req.offset, "length", req.length, "err", err)
		c.replyError(req, errIO, "read failed")
		return
	}
	var hdr []byte
	if c.structured {
		hdr = appendStructuredHeader(make([]byte, 0, 28), replyFlagDone, replyTypeOffsetData, req.handle, uint32(8+len(buf)))
		hdr = binary.BigEndian.AppendUint64(hdr, req.offset)
	} else {
		hdr = appendSimpleReply(make([]byte, 0, 16), 0, req.handle)
	}
	if err := c.write(hdr, buf); err != nil {
		c.writeFailed(err)
	}
}

// blockStatus serves one BLOCK_STATUS request for base:allocation.
func (c *conn) blockStatus(dev Device, req request) {
	off, length := int64(req.offset), min(int64(req.length), maxStatusQuery)
	var es []Extent
	if x, ok := dev.(Extenter); ok {
		var err error
		es, err = x.Extents(off, length)
		if err != nil {
			c.log.Error("nbd: device extents", "offset", off, "length", length, "err", err)
			c.replyError(req, errIO, "block status failed")
			return
		}
	}
	ds := blockStatus(es, off, length, req.flags&cmdFlagReqOne != 0)
	b := appendStructuredHeader(make([]byte, 0, 24+8*len(ds)), replyFlagDone, replyTypeBlockStatus, req.handle, uint32(4+8*len(ds)))
	b = binary.BigEndian.AppendUint32(b, metaBaseAllocationID)
	for _, d := range ds {
		b = binary.BigEndian.AppendUint32(b, d.length)
		b = binary.BigEndian.AppendUint32(b, d.flags)
	}
	if err := c.write(b); err != nil {
		c.writeFailed(err)
	}
}

// replyError sends an error reply: a structured error chunk where the
// command's replies are structured, a simple reply otherwise. It reports
// whether the connection is still usable.
func (c *conn) replyError(req request, errno uint32, msg string) bool {
	var b []byte
	if c.structured && (req.typ == cmdRead || req.typ == cmdBlockStatus) {
		b = appendStructuredError(nil, req.handle, errno, msg)
	} else {
		b = appendSimpleReply(nil, errno, req.handle)
	}
	if err := c.write(b); err != nil {
		c.writeFailed(err)
		return false
	}
	return true
}

// writeFailed closes a connection whose replies can no longer be sent,
// which also stops its request loop.
func (c *conn) writeFailed(err error) {
	if !c.isStopping() {
		c.log.Warn("nbd: send reply", "err", err)
	}
	c.close()
}

// Read buffers are pooled by power-of-two size class, from 4 KiB up to
// MaxRequestLength.
const (
	minBufferShift = 12
	maxBufferShift = 25 // 1<<maxBufferShift == MaxRequestLength
)

var bufferPools [maxBufferShift - minBufferShift + 1]sync.Pool

func bufferClass(n int) int {
	if n <= 1<<minBufferShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufferShift
}

func getBuffer(n int) []byte {
	class := bufferClass(n)
	if p, ok := bufferPools[class].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(class+minBufferShift))
}

func putBuffer(b []byte) {
	class := bufferClass(cap(b))
	if cap(b) != 1<<(class+minBufferShift) {
		return
	}
	bufferPools[class].Put(&b)
}
