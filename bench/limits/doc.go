// Package limits measures the machine's ceilings that Ferry's figures are
// a fraction of: sequential O_DIRECT write and read of the data disk,
// loopback TCP and TLS 1.3 throughput over one stream, and the
// single-core speed of SHA-256, BLAKE3, AES-256-GCM, XChaCha20-Poly1305
// and the agent's codecs (zstd's fastest level, S2) on mixed data.
package limits
