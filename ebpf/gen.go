package ebpf

// The BPF object and its Go bindings (blk_bpfel.go, blk_bpfel.o) are
// generated and committed, so building Ferry needs no clang. Regenerate
// them after editing blk.c (Debian: apt-get install -y clang llvm libbpf-dev):
//
//	go generate ./ebpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel blk blk.c -- -I/usr/include/x86_64-linux-gnu
