//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// blk.c reports completed writes to the tracked block devices. It runs on
// the block layer's block_rq_complete tracepoint as a BTF-enabled (tp_btf)
// program, so it needs neither tracefs nor kernel headers: the few kernel
// structures it reads are declared below with preserve_access_index, and
// libbpf-style CO-RE relocations (applied by cilium/ebpf at load time) fix
// their offsets for the running kernel.
//
// Regenerate blk_bpfel.go and blk_bpfel.o with `go generate ./ebpf` (needs
// clang and libbpf-dev); see docs/ebpf.md.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Minimal views of the kernel's structures; CO-RE matches them by name.
struct gendisk {
	int major;
	int first_minor;
} __attribute__((preserve_access_index));

struct request_queue {
	struct gendisk *disk;
} __attribute__((preserve_access_index));

struct request {
	struct request_queue *q;
	__u32 cmd_flags;
	unsigned int __data_len;
	__u64 __sector;
} __attribute__((preserve_access_index));

// Request operations (enum req_op in include/linux/blk_types.h). These
// values have been stable since Linux 4.10 except ZONE_APPEND, which is
// relocated by name.
enum req_op {
	REQ_OP_WRITE = 1,
	REQ_OP_DISCARD = 3,
	REQ_OP_SECURE_ERASE = 5,
	REQ_OP_ZONE_APPEND = 7,
	REQ_OP_WRITE_ZEROES = 9,
};

#define REQ_OP_MASK 0xff
#define MINORBITS 20

// event is one completed write: nr_sector 512-byte sectors from sector on
// the whole disk dev (the kernel's dev_t, major<<20 | minor). seq numbers
// the events in the order their ring slots were taken, from 0 without
// gaps (a failed reservation takes no number), so that userspace can tell
// when it has read every event of every write completed before a moment:
// all those with seq below the counter's value at that moment.
struct event {
	__u32 dev;
	__u32 nr_sector;
	__u64 sector;
	__u64 seq;
	__u32 kind; // EV_COMPLETE or EV_ISSUE
	__u32 pad;
};

// seq holds the next event number (one entry, key 0).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seq SEC(".maps");

// devices maps the kernel dev_t of each tracked disk to its index in lost.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} devices SEC(".maps");

// lost counts, per tracked disk and CPU, events that did not fit in events.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

// events carries struct event records to userspace. Userspace may resize it.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");


static __always_inline int is_write(__u32 op)
{
	if (op == REQ_OP_WRITE || op == REQ_OP_DISCARD ||
	    op == REQ_OP_SECURE_ERASE || op == REQ_OP_WRITE_ZEROES)
		return 1;
	if (bpf_core_enum_value_exists(enum req_op, REQ_OP_ZONE_APPEND) &&
	    op == bpf_core_enum_value(enum req_op, REQ_OP_ZONE_APPEND))
		return 1;
	return 0;
}

// Event kinds.
#define EV_COMPLETE 0
#define EV_ISSUE 1

// record reports a write request of a tracked disk: its completion
// (EV_COMPLETE, nr_bytes done) or its issue to the driver (EV_ISSUE, the
// whole request). Completions are what the agent reads after; issues are
// the fallback for a completion the tracepoint does not report (seen
// under concurrent reads on loop devices), which userspace settles.
static __always_inline int record(struct request *rq, unsigned int nr_bytes, __u32 kind)
{
	// Failed writes are reported too: part of the data may have changed.
	if (!is_write(rq->cmd_flags & REQ_OP_MASK))
		return 0;

	struct gendisk *disk = rq->q->disk;
	if (!disk)
		return 0;
	__u32 dev = ((__u32)disk->major << MINORBITS) | (__u32)disk->first_minor;
	__u32 *idx = bpf_map_lookup_elem(&devices, &dev);
	if (!idx)
		return 0;

	__u32 nr_sector = nr_bytes >> 9;
	if (nr_sector == 0) {
		// A discard or write-zeroes completes with its length in the
		// request, not in nr_bytes, on some drivers; fall back to it.
		nr_sector = BPF_CORE_READ(rq, __data_len) >> 9;
		if (nr_sector == 0)
			return 0;
	}

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u64 *n = bpf_map_lookup_elem(&lost, idx);
		if (n)
			*n += 1;
		return 0;
	}
	__u32 zero = 0;
	__u64 *next = bpf_map_lookup_elem(&seq, &zero);
	if (!next) {
		// Cannot happen (an array's entries always exist); without a
		// number the event could not be accounted for, so count it lost.
		bpf_ringbuf_discard(e, 0);
		__u64 *n = bpf_map_lookup_elem(&lost, idx);
		if (n)
			*n += 1;
		return 0;
	}
	e->dev = dev;
	e->nr_sector = nr_sector;
	e->sector = rq->__sector;
	e->kind = kind;
	e->pad = 0;
	// Numbered while the slot is held: the number is taken before the
	// write completes to its writer, which is what Sync relies on.
	e->seq = __sync_fetch_and_add(next, 1);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
	return record(rq, nr_bytes, EV_COMPLETE);
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue, struct request *rq)
{
	return record(rq, BPF_CORE_READ(rq, __data_len), EV_ISSUE);
}
