// Package pki is Ferry's certificate authority: it creates or loads the CA
// that anchors all of Ferry's TLS, issues the server certificates for the
// API and the data plane, signs agent certificates at pairing time and builds
// the TLS 1.3 configurations both sides use.
//
// Trust model:
//
//   - The control plane owns one CA (ca.crt, ca.key). Its SHA-256 fingerprint
//     (see [CA.Fingerprint]) is what an operator hands to an agent together
//     with an install token.
//   - On first contact the agent trusts the server only if the chain the server
//     presents contains a CA certificate with that fingerprint and the server
//     certificate verifies against it ([ClientTLSConfig]). After pairing the
//     agent keeps the CA certificate and uses [ClientTLSConfigWithCA].
//   - At pairing the agent sends a CSR made with [NewKeyAndCSR]; the server
//     signs it with [CA.SignAgentCSR]. The CA ignores everything the CSR asks
//     for except its public key: the certificate names the source server in a
//     URI SAN (ferry://server/<id>, read back with [ServerIDFromCert]) and is
//     good for TLS client authentication only.
//   - The data plane requires and verifies that certificate
//     ([CA.ServerTLSConfig]) and asks [CA.IsRevoked] on every handshake, so a
//     revoked agent is refused at once, without waiting for its certificate
//     to expire.
//
// Only the standard library's crypto is used. Keys are ECDSA P-256 unless an
// operator supplies a CA of another type.
package pki
