package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Connection budget. Every open connection holds a descriptor, a goroutine and a read buffer
// (readBufferSize), so the cap follows the descriptor limit but, unless --max-conns says more,
// stops at a figure whose memory a small host can still afford.
const (
	// minDescriptorHeadroom: an eighth of the descriptor limit, and never less than this, is
	// kept for everything that is not a client connection: the database, the listener, the
	// runtime's poller, and later blob files and outgoing webhook connections.
	minDescriptorHeadroom = 64
	// defaultMaxConns is the cap when --max-conns is 0 and descriptors allow it.
	defaultMaxConns = 10000
	// defaultMaxConnsPerIP is how many connections one client address may hold at once.
	defaultMaxConnsPerIP = 128

	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// connectionCap is how many client connections the server may hold: requested (0 for the
// default), never above what the descriptor limit (0 when unknown) leaves after its headroom.
func connectionCap(requested int, descriptorLimit uint64) int {
	if requested == 0 {
		requested = defaultMaxConns
	}
	if descriptorLimit == 0 {
		return requested
	}
	headroom := max(minDescriptorHeadroom, descriptorLimit/8)
	if descriptorLimit <= headroom {
		return 1
	}
	return int(min(uint64(requested), descriptorLimit-headroom))
}

// connStats are the listener's counters, read by /metrics.
type connStats struct {
	open           atomic.Int64
	capWaits       atomic.Uint64
	refusedPerAddr atomic.Uint64
	acceptRetries  atomic.Uint64
}

// limitListener caps the connections in use: at the cap, Accept waits for one to close and
// leaves new ones in the kernel's backlog; a client address over its own cap is closed at
// once. Running out of descriptors anyway (another process, a burst of file opens) makes it back
// off and retry, as net/http's Server.Serve does, instead of failing: the server must outlive it.
type limitListener struct {
	net.Listener
	log     *slog.Logger
	slots   chan struct{}
	perAddr int
	stats   *connStats

	mu     sync.Mutex
	byAddr map[netip.Addr]int

	closeOnce sync.Once
	closed    chan struct{}

	lastCapLog time.Time // only Accept's goroutine touches it
}

func newLimitListener(ln net.Listener, maxConns, perAddr int, stats *connStats, log *slog.Logger) *limitListener {
	return &limitListener{
		Listener: ln, log: log, slots: make(chan struct{}, maxConns), perAddr: perAddr, stats: stats,
		byAddr: map[netip.Addr]int{}, closed: make(chan struct{}),
	}
}

func (l *limitListener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		if err := l.takeSlot(); err != nil {
			return nil, err
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			if !outOfResources(err) {
				return nil, err
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			l.stats.acceptRetries.Add(1)
			l.log.Warn("accept failed; retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-l.closed:
				return nil, net.ErrClosed
			}
			continue
		}
		backoff = 0
		addr := remoteAddr(c)
		if !l.admit(addr) {
			c.Close()
			<-l.slots
			l.stats.refusedPerAddr.Add(1)
			continue
		}
		l.stats.open.Add(1)
		return withTLS(&serverConn{Conn: c, release: func() { l.release(addr) }}), nil
	}
}

// takeSlot waits until fewer than the cap are open, counting (and logging, at most once a
// minute) each time the cap made a connection wait.
func (l *limitListener) takeSlot() error {
	select {
	case l.slots <- struct{}{}:
		return nil
	default:
	}
	l.stats.capWaits.Add(1)
	if time.Since(l.lastCapLog) > time.Minute {
		l.lastCapLog = time.Now()
		l.log.Warn("connection cap reached; new connections wait until one closes", "max_conns", cap(l.slots))
	}
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-l.closed:
		return net.ErrClosed
	}
}

// Close stops Accept, including one waiting for a free slot.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func (l *limitListener) admit(addr netip.Addr) bool {
	if l.perAddr <= 0 || !addr.IsValid() {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byAddr[addr] >= l.perAddr {
		return false
	}
	l.byAddr[addr]++
	return true
}

func (l *limitListener) release(addr netip.Addr) {
	if l.perAddr > 0 && addr.IsValid() {
		l.mu.Lock()
		if l.byAddr[addr]--; l.byAddr[addr] <= 0 {
			delete(l.byAddr, addr)
		}
		l.mu.Unlock()
	}
	l.stats.open.Add(-1)
	<-l.slots
}

// outOfResources reports the accept errors that pass once descriptors or buffers are freed.
func outOfResources(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

func remoteAddr(c net.Conn) netip.Addr {
	if tcp, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		a, _ := netip.AddrFromSlice(tcp.IP)
		return a.Unmap()
	}
	return netip.Addr{}
}

// serverConn is one accepted connection. It gives its slot back when its descriptor is really
// closed, can be told to linger (linger.go), and measures the first line of each request so a
// head too large to buffer can still be told apart: a request line over the limit (414) from
// header fields over theirs (431).
type serverConn struct {
	net.Conn
	release   func()
	closeOnce sync.Once
	linger    atomic.Bool

	// fasthttp reads a connection and runs its handlers on one goroutine, so these need no lock.
	lineLen  int  // bytes of the current request's first line read so far
	lineDone bool // its line feed has been read
}

func (c *serverConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.lineDone {
		if i := bytes.IndexByte(p[:n], '\n'); i >= 0 {
			c.lineLen += i
			c.lineDone = true
		} else {
			c.lineLen += n
		}
	}
	return n, err
}

// nextRequest starts measuring the next request's first line. It is called as each request is
// handled, when (keep-alive clients wait for the answer) the next request has not been read yet.
func (c *serverConn) nextRequest() {
	c.lineLen, c.lineDone = 0, false
}

// firstLineOver reports whether the current request's first line is longer than limit bytes.
func (c *serverConn) firstLineOver(limit int) bool {
	return c.lineLen > limit
}

// closeNow closes the descriptor and gives the slot back, once.
func (c *serverConn) closeNow() error {
	err := c.Conn.Close()
	c.closeOnce.Do(c.release)
	return err
}

// CloseWrite half-closes a TCP connection (over TLS, after its close_notify).
func (c *serverConn) CloseWrite() error {
	conn := c.Conn
	if tc, ok := conn.(*tls.Conn); ok {
		if err := tc.CloseWrite(); err != nil {
			return err
		}
		conn = tc.NetConn()
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		return tcp.CloseWrite()
	}
	return errors.ErrUnsupported
}

// requestStarted tells c (if it is one of ours) that a request of it is being handled.
func requestStarted(c net.Conn) {
	if sc, ok := ourConn(c); ok {
		sc.nextRequest()
	}
}

// requestLineOver reports whether c's current request line is known to be over limit bytes.
func requestLineOver(c net.Conn, limit int) bool {
	sc, ok := ourConn(c)
	return ok && sc.firstLineOver(limit)
}
