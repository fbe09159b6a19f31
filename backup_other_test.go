//go:build !unix

package main

import "net"

// dialSmallWindow is a plain dial where the receive buffer cannot be set before the handshake.
func dialSmallWindow(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }
