// Package storetest is the conformance suite for ferry.Store. Every
// implementation runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) ferry.Store { return openEmpty(t) })
//	}
//
// The suite covers the whole documented contract: not-found and conflict
// errors, atomic updates under concurrency, cursor pagination, every
// filter, exact round trips of nested data, install-token use counting,
// job logs and the audit trail.
package storetest
