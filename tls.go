package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"
)

// certificates is the pair HTTPS serves, read from --tls-cert and --tls-key. A reload (SIGHUP)
// reads both files again and swaps the pair for new handshakes only: connections already open
// keep the certificate they were made with. A pair that does not load changes nothing, so a
// renewal that wrote half its files, or the wrong key, never takes the listener down.
type certificates struct {
	certFile, keyFile string
	log               *slog.Logger
	current           atomic.Pointer[tls.Certificate]
}

// loadCertificates reads the pair once, failing when it does not load: a server that was asked
// for HTTPS does not start without it.
func loadCertificates(certFile, keyFile string, log *slog.Logger) (*certificates, error) {
	c := &certificates{certFile: certFile, keyFile: keyFile, log: log}
	pair, err := c.read()
	if err != nil {
		return nil, fmt.Errorf("--tls-cert %s and --tls-key %s: %w", certFile, keyFile, err)
	}
	c.current.Store(pair)
	c.warnIfOutOfDate(pair)
	return c, nil
}

func (c *certificates) read() (*tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return nil, err
	}
	if pair.Leaf == nil { // GODEBUG=x509keypairleaf=0 leaves it out
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, err
		}
	}
	return &pair, nil
}

// reload swaps in the files' current pair, or keeps serving the previous one and says why.
func (c *certificates) reload() error {
	pair, err := c.read()
	if err != nil {
		c.log.Error("TLS certificate not reloaded; the previous one still serves", "cert", c.certFile, "key", c.keyFile, "err", err)
		return err
	}
	c.current.Store(pair)
	c.log.Info("TLS certificate reloaded", "cert", c.certFile, "subject", pair.Leaf.Subject.String(), "not_after", pair.Leaf.NotAfter)
	c.warnIfOutOfDate(pair)
	return nil
}

// warnIfOutOfDate says so when clients will refuse the pair: it is still served (a renewal may
// be on its way, and refusing would only trade a warning in browsers for no service at all).
func (c *certificates) warnIfOutOfDate(pair *tls.Certificate) {
	if now := time.Now(); now.After(pair.Leaf.NotAfter) || now.Before(pair.Leaf.NotBefore) {
		c.log.Warn("the TLS certificate is outside its validity period; clients will refuse it",
			"cert", c.certFile, "not_before", pair.Leaf.NotBefore, "not_after", pair.Leaf.NotAfter)
	}
}

// config is the listener's TLS configuration: every handshake takes the pair current then.
func (c *certificates) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// fasthttp speaks HTTP/1.1 only: say so in ALPN, so no client tries h2 on us.
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.current.Load(), nil
		},
	}
}

// reloadTLS serves SIGHUP: a fresh read of the certificate files.
func (s *server) reloadTLS() {
	if s.certs == nil {
		s.log.Info("SIGHUP: nothing to reload without --tls-cert")
		return
	}
	s.certs.reload() // logged either way
}

// tlsServerConn is a serverConn over TLS, which fasthttp recognises by the two methods below
// (RequestCtx.IsTLS, which the session cookie's Secure attribute follows). The TLS layer sits
// under serverConn, not over it, so that serverConn still reads plaintext: it measures request
// lines, and its slot accounting and lingering close work as over plain TCP.
type tlsServerConn struct {
	*serverConn
	tls *tls.Conn
}

func (c *tlsServerConn) Handshake() error                     { return c.tls.Handshake() }
func (c *tlsServerConn) ConnectionState() tls.ConnectionState { return c.tls.ConnectionState() }

// withTLS gives fasthttp the TLS view of sc when its connection is one.
func withTLS(sc *serverConn) net.Conn {
	if tc, ok := sc.Conn.(*tls.Conn); ok {
		return &tlsServerConn{serverConn: sc, tls: tc}
	}
	return sc
}

// ourConn is the serverConn behind a connection fasthttp hands a handler, if it is one of ours.
func ourConn(c net.Conn) (*serverConn, bool) {
	switch c := c.(type) {
	case *serverConn:
		return c, true
	case *tlsServerConn:
		return c.serverConn, true
	}
	return nil, false
}
