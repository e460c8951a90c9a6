// Package postlaunch checks a launched instance: a boot marker on its
// serial console, a TCP port that accepts connections, an HTTP answer.
//
// Each check retries until it passes or its context ends, and returns a
// [Result] (status, output, duration) for the caller to store and show.
// Bound each check with context.WithTimeout, or run an ordered list of them
// with [Run], which gives each its own timeout.
package postlaunch
