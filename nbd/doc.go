// Package nbd serves read-only block devices over the Network Block Device
// protocol and exports them to image files.
//
// Ferry uses it to make point-in-time snapshots of replicated disks readable
// by real NBD clients: qemu-img, nbdinfo and nbdcopy (libnbd), and
// qemu-system-x86_64, which boots test instances from a qcow2 overlay whose
// backing file is an export of this server.
//
// The [Server] speaks the fixed newstyle handshake (NBD_OPT_GO, NBD_OPT_INFO,
// NBD_OPT_EXPORT_NAME, NBD_OPT_LIST, NBD_OPT_ABORT, NBD_OPT_STRUCTURED_REPLY,
// NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT and, with a TLS
// configuration, NBD_OPT_STARTTLS) and, in transmission, READ (simple and
// structured replies), BLOCK_STATUS for the "base:allocation" context, FLUSH
// and DISC. Exports are read-only: WRITE, TRIM and WRITE_ZEROES fail with
// EPERM. Requests on one connection are served concurrently and their
// replies are serialized; memory per connection is bounded whatever a
// client sends.
//
// A [Device] is an [io.ReaderAt] with a size; one that also implements
// [Extenter] reports its holes. [WithExtents] adapts a store reader whose
// Extents method returns its own extent type.
//
// [Client] is the other side, for reading an export that someone else
// (QEMU's own NBD server, for the connector) serves: READ and BLOCK_STATUS
// with the base:allocation and qemu:dirty-bitmap:NAME contexts.
//
// [Export] copies a [Device] to a raw, qcow2 or vmdk image by serving it on a
// private unix socket to qemu-img convert.
//
// The protocol is specified at
// https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md.
package nbd
