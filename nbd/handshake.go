package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// handshake runs the fixed newstyle handshake. It returns the device and
// name the client chose, or a nil device if the client aborted.
func (c *conn) handshake(ctx context.Context) (Device, string, error) {
	b := binary.BigEndian.AppendUint64(nil, nbdMagic)
	b = binary.BigEndian.AppendUint64(b, optMagic)
	b = binary.BigEndian.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	if err := c.write(b); err != nil {
		return nil, "", fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return nil, "", fmt.Errorf("read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(clientFlagFixedNewstyle|clientFlagNoZeroes) != 0 {
		return nil, "", fmt.Errorf("unknown client flags %#x", flags)
	}
	if flags&clientFlagFixedNewstyle == 0 {
		return nil, "", errors.New("client does not speak fixed newstyle")
	}
	c.noZeroes = flags&clientFlagNoZeroes != 0

	tlsDone := false
	var hb [optionHeaderLen]byte
	for range maxOptions {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			return nil, "", fmt.Errorf("read option header: %w", err)
		}
		h, err := parseOptionHeader(hb[:])
		if err != nil {
			return nil, "", err
		}
		if h.length > maxOptionLength {
			if h.opt == optExportName {
				return nil, "", fmt.Errorf("export name of %d bytes", h.length)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(h.length)); err != nil {
				return nil, "", fmt.Errorf("skip oversized option %d: %w", h.opt, err)
			}
			if err := c.replyOption(h.opt, repErrTooBig, fmt.Sprintf("option data of %d bytes exceeds %d", h.length, maxOptionLength)); err != nil {
				return nil, "", err
			}
			continue
		}
		data := make([]byte, h.length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, "", fmt.Errorf("read option %d data: %w", h.opt, err)
		}
		if c.srv.TLSConfig != nil && !tlsDone && h.opt != optStartTLS && h.opt != optAbort {
			if h.opt == optExportName {
				return nil, "", errors.New("NBD_OPT_EXPORT_NAME before STARTTLS")
			}
			if err := c.replyOption(h.opt, repErrTLSReqd, "TLS is required: send NBD_OPT_STARTTLS first"); err != nil {
				return nil, "", err
			}
			continue
		}

		switch h.opt {
		case optExportName:
			dev, err := c.exportName(data)
			return dev, string(data), err
		case optGo, optInfo:
			dev, name, err := c.goInfo(h.opt, data)
			if err != nil || dev != nil {
				return dev, name, err
			}
		case optList:
			err = c.list(data)
		case optAbort:
			// The client may already have closed; the ACK is a courtesy.
			c.replyOption(h.opt, repAck, "")
			return nil, "", nil
		case optStructuredReply:
			if len(data) != 0 {
				err = c.replyOption(h.opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
				break
			}
			c.structured = true
			err = c.replyOption(h.opt, repAck, "")
		case optListMetaContext, optSetMetaContext:
			err = c.metaContext(h.opt, data)
		case optStartTLS:
			if c.srv.TLSConfig == nil {
				err = c.replyOption(h.opt, repErrUnsup, "TLS is not configured")
				break
			}
			if tlsDone || len(data) != 0 {
				err = c.replyOption(h.opt, repErrInvalid, "TLS already negotiated or option has data")
				break
			}
			if err := c.startTLS(ctx); err != nil {
				return nil, "", err
			}
			tlsDone = true
		default:
			err = c.replyOption(h.opt, repErrUnsup, fmt.Sprintf("option %d is not supported", h.opt))
		}
		if err != nil {
			return nil, "", err
		}
	}
	return nil, "", fmt.Errorf("more than %d options", maxOptions)
}

// replyOption sends an option reply whose data is msg (a message for error
// replies, empty for ACK).
func (c *conn) replyOption(opt, typ uint32, msg string) error {
	return c.replyOptionData(opt, typ, []byte(msg))
}

func (c *conn) replyOptionData(opt, typ uint32, data []byte) error {
	if err := c.write(appendOptionReply(nil, opt, typ, data)); err != nil {
		return fmt.Errorf("send reply to option %d: %w", opt, err)
	}
	return nil
}

// lookupForClient looks an export up, logging failures other than unknown
// names.
func (c *conn) lookupForClient(name string) (Device, error) {
	dev, err := c.srv.lookup(name)
	if err != nil && !errors.Is(err, ErrUnknownExport) {
		c.log.Error("nbd: lookup export", "export", name, "err", err)
	}
	return dev, err
}

func (c *conn) transmissionFlags() uint16 {
	return tflagHasFlags | tflagReadOnly | tflagSendFlush | tflagCanMultiConn
}

// exportName handles NBD_OPT_EXPORT_NAME, which has no error reply: an
// unknown export ends the connection.
func (c *conn) exportName(data []byte) (Device, error) {
	if len(data) > maxStringLength || bytes.IndexByte(data, 0) >= 0 {
		return nil, errors.New("NBD_OPT_EXPORT_NAME: invalid export name")
	}
	name := string(data)
	dev, err := c.lookupForClient(name)
	if err != nil {
		return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME: %w", err)
	}
	b := binary.BigEndian.AppendUint64(nil, uint64(dev.Size()))
	b = binary.BigEndian.AppendUint16(b, c.transmissionFlags())
	if !c.noZeroes {
		b = append(b, make([]byte, 124)...)
	}
	if err := c.write(b); err != nil {
		return nil, fmt.Errorf("send export info: %w", err)
	}
	if c.metaName != name {
		c.metaAlloc = false
	}
	return dev, nil
}

// goInfo handles NBD_OPT_GO and NBD_OPT_INFO. For a successful NBD_OPT_GO it
// returns the device; otherwise the handshake goes on.
func (c *conn) goInfo(opt uint32, data []byte) (Device, string, error) {
	req, err := parseExportRequest(data)
	if err != nil {
		return nil, "", c.replyOption(opt, repErrInvalid, err.Error())
	}
	dev, err := c.lookupForClient(req.name)
	if err != nil {
		return nil, "", c.replyOption(opt, repErrUnknown, fmt.Sprintf("export %q is not available", req.name))
	}
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, uint64(dev.Size()))
	info = binary.BigEndian.AppendUint16(info, c.transmissionFlags())
	if err := c.replyOptionData(opt, repInfo, info); err != nil {
		return nil, "", err
	}
	if slices.Contains(req.infos, infoName) {
		info = binary.BigEndian.AppendUint16(info[:0], infoName)
		info = append(info, req.name...)
		if err := c.replyOptionData(opt, repInfo, info); err != nil {
			return nil, "", err
		}
	}
	// Block sizes may be sent unasked; clients then keep reads within
	// MaxRequestLength.
	info = binary.BigEndian.AppendUint16(info[:0], infoBlockSize)
	info = binary.BigEndian.AppendUint32(info, 1)
	info = binary.BigEndian.AppendUint32(info, preferredBlockSize)
	info = binary.BigEndian.AppendUint32(info, MaxRequestLength)
	if err := c.replyOptionData(opt, repInfo, info); err != nil {
		return nil, "", err
	}
	if err := c.replyOption(opt, repAck, ""); err != nil {
		return nil, "", err
	}
	if opt != optGo {
		return nil, "", nil
	}
	if c.metaName != req.name {
		c.metaAlloc = false
	}
	return dev, req.name, nil
}

// list handles NBD_OPT_LIST.
func (c *conn) list(data []byte) error {
	if len(data) != 0 {
		return c.replyOption(optList, repErrInvalid, "NBD_OPT_LIST takes no data")
	}
	if c.srv.List == nil {
		return c.replyOption(optList, repErrPolicy, "listing exports is disabled")
	}
	names, err := c.srv.List()
	if err != nil {
		c.log.Error("nbd: list exports", "err", err)
		return c.replyOption(optList, repErrPolicy, "cannot list exports")
	}
	for _, name := range names {
		if len(name) > maxStringLength {
			continue
		}
		b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
		b = append(b, name...)
		if err := c.replyOptionData(optList, repServer, b); err != nil {
			return err
		}
	}
	return c.replyOption(optList, repAck, "")
}

// metaContext handles NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The only context is base:allocation.
func (c *conn) metaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext && !c.structured {
		return c.replyOption(opt, repErrInvalid, "negotiate structured replies first")
	}
	req, err := parseMetaContextRequest(data)
	if err != nil {
		return c.replyOption(opt, repErrInvalid, err.Error())
	}
	if _, err := c.lookupForClient(req.name); err != nil {
		return c.replyOption(opt, repErrUnknown, fmt.Sprintf("export %q is not available", req.name))
	}
	match := false
	if opt == optListMetaContext && len(req.queries) == 0 {
		match = true
	}
	for _, q := range req.queries {
		if q == metaBaseAllocation || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == optSetMetaContext {
		c.metaName = req.name
		c.metaAlloc = match
	}
	if match {
		var id uint32
		if opt == optSetMetaContext {
			id = metaBaseAllocationID
		}
		b := binary.BigEndian.AppendUint32(nil, id)
		b = append(b, metaBaseAllocation...)
		if err := c.replyOptionData(opt, repMetaContext, b); err != nil {
			return err
		}
	}
	return c.replyOption(opt, repAck, "")
}

// startTLS acknowledges NBD_OPT_STARTTLS and upgrades the connection.
// Negotiated state is reset, as the spec requires.
func (c *conn) startTLS(ctx context.Context) error {
	if c.br.Buffered() != 0 {
		return errors.New("client sent data after NBD_OPT_STARTTLS before the reply")
	}
	if err := c.replyOption(optStartTLS, repAck, ""); err != nil {
		return err
	}
	c.mu.Lock()
	raw := c.nc
	c.mu.Unlock()
	tc := tls.Server(raw, c.srv.TLSConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.mu.Lock()
	c.nc = tc
	stopping := c.stopping
	c.mu.Unlock()
	if stopping {
		return errors.New("server shutting down")
	}
	c.br.Reset(tc)
	c.structured = false
	c.metaName, c.metaAlloc = "", false
	return nil
}
