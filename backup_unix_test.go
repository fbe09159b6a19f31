//go:build unix

package main

import (
	"net"
	"syscall"
)

// dialSmallWindow connects with a receive buffer of 4 KiB set before the handshake, so a client
// that stops reading holds up the server after a few kilobytes, not after the megabytes a
// loopback window grows to.
func dialSmallWindow(addr string) (net.Conn, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cErr := c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) }); cErr != nil {
			return cErr
		}
		return err
	}}
	return d.Dial("tcp", addr)
}
