package main

import (
	"io"
	"net"
	"sync/atomic"
	"time"
)

// Lingering close bounds: how long and how much of a refused body is read and dropped before the
// socket is closed.
const (
	lingerTimeout = 2 * time.Second
	lingerBytes   = 64 << 20
)

// lingeringListener hands out connections that can be told to drain their unread input before
// closing, so a client still sending a refused body reads our answer instead of a reset.
type lingeringListener struct{ net.Listener }

func (l lingeringListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &lingeringConn{Conn: c}, nil
}

type lingeringConn struct {
	net.Conn
	linger atomic.Bool
}

// lingerOnClose marks c (if it is one of ours) to drain before it closes.
func lingerOnClose(c net.Conn) {
	if lc, ok := c.(*lingeringConn); ok {
		lc.linger.Store(true)
	}
}

// Close half-closes the write side, so the client sees our answer complete, then drains what it
// still sends, in the background and bounded in time and bytes, before the real close.
func (c *lingeringConn) Close() error {
	if !c.linger.Load() {
		return c.Conn.Close()
	}
	tcp, ok := c.Conn.(*net.TCPConn)
	if !ok {
		return c.Conn.Close()
	}
	if err := tcp.CloseWrite(); err != nil {
		return tcp.Close()
	}
	// This goroutine may outlive server.Close: it owns nothing but this socket, and ends within
	// lingerTimeout whatever the client does.
	go func() {
		tcp.SetReadDeadline(time.Now().Add(lingerTimeout))
		io.CopyN(io.Discard, tcp, lingerBytes)
		tcp.Close()
	}()
	return nil
}
