package main

import (
	"io"
	"net"
	"time"
)

// Lingering close bounds: how long and how much of a refused body is read and dropped before the
// socket is closed.
const (
	lingerTimeout = 2 * time.Second
	lingerBytes   = 64 << 20
)

// lingerOnClose marks c (if it is one of ours) to drain its unread input before it closes, so a
// client still sending a refused body reads our answer instead of a reset.
func lingerOnClose(c net.Conn) {
	if sc, ok := ourConn(c); ok {
		sc.linger.Store(true)
	}
}

// Close half-closes the write side, so the client sees our answer complete, then drains what it
// still sends, in the background and bounded in time and bytes, before the real close. The
// connection's slot is given back only then, when its descriptor is free.
func (c *serverConn) Close() error {
	if !c.linger.Load() {
		return c.closeNow()
	}
	if err := c.CloseWrite(); err != nil {
		return c.closeNow()
	}
	// This goroutine may outlive server.Close: it owns nothing but this socket, and ends within
	// lingerTimeout whatever the client does.
	go func() {
		c.Conn.SetReadDeadline(time.Now().Add(lingerTimeout))
		io.CopyN(io.Discard, c.Conn, lingerBytes)
		c.closeNow()
	}()
	return nil
}
