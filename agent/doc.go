// Package agent is Ferry's agent on a source server: it discovers the
// host's facts and block devices, pairs with the server using an install
// token (key generated locally, certificate issued by the server's CA),
// keeps its identity in a state directory, and connects to the data plane
// over mutual TLS.
//
// The agent never imports control-plane packages; it speaks to the server
// only through package api and the data-plane connection.
package agent
