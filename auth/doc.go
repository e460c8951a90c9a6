// Package auth makes and checks Ferry's bearer secrets: API tokens and
// agent install tokens. A secret reads "<prefix>_<id>_<secret>"; the id
// finds the stored record, and only a SHA-256 hash of the secret part is
// stored and compared, in constant time.
package auth
