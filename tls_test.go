package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
)

// writeCertPair writes a fresh self-signed certificate for 127.0.0.1 named name, and its key,
// to certFile and keyFile (each through a rename, as a renewal tool would), and returns it.
func writeCertPair(t testing.TB, certFile, keyFile, name string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		// Its own root, so a client can trust exactly this certificate.
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	replaceFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func replaceFile(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// pinnedClient trusts exactly the given certificates and opens a new connection per request,
// so every request sees the certificate the server serves at that moment.
func pinnedClient(certs ...*x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
}

// servedCertificate is the common name of the certificate a new TLS connection to addr gets.
func servedCertificate(t testing.TB, addr string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) // only reads the name
	if err != nil {
		t.Fatalf("TLS dial %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
}

func tlsConfig(t testing.TB) (cfg Config, cert *x509.Certificate) {
	t.Helper()
	cfg = defaultConfig()
	cfg.Data = t.TempDir()
	cfg.ShutdownTimeout = 5 * time.Second
	dir := t.TempDir()
	cfg.TLSCert, cfg.TLSKey = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	return cfg, writeCertPair(t, cfg.TLSCert, cfg.TLSKey, "first")
}

// Over HTTPS the session cookie is Secure, so a browser never sends it over plain HTTP; over
// plain HTTP (behind no proxy) it cannot be, or the browser would drop it.
func TestSessionCookieIsSecureOverTLS(t *testing.T) {
	cfg, cert := tlsConfig(t)
	ts := startServerWith(t, cfg, slog.New(slog.DiscardHandler), io.Discard, "https", pinnedClient(cert))
	plain := newTestServer(t)
	for _, c := range []struct {
		name   string
		ts     *testServer
		secure bool
	}{{"https", ts, true}, {"http", plain, false}} {
		t.Run(c.name, func(t *testing.T) {
			org := c.ts.newOrg(t, 0, 0)
			m, err := c.ts.db.CreateMember(context.Background(), org.OrgID, engine.NewMember{Email: "tls-" + c.name + "@example.com", Name: "T", Role: engine.RoleAdmin})
			if err != nil {
				t.Fatal(err)
			}
			signedIn := c.ts.signIn(t, m.Member.Email, m.Password)
			if signedIn.cookie.Secure != c.secure {
				t.Fatalf("over %s the session cookie has Secure=%v, want %v", c.name, signedIn.cookie.Secure, c.secure)
			}
			// The cookie works over the scheme it was set on.
			mustStatus(t, c.ts.as(t, signedIn, "GET", "/session", nil), 200)
		})
	}
	// File URLs default to the scheme the server speaks.
	if !strings.HasPrefix(ts.attach.(*fetchAttacher).publicURL, "https://") {
		t.Errorf("default public URL over TLS is %q", ts.attach.(*fetchAttacher).publicURL)
	}
}

// Request lines over TLS are measured as over TCP: the TLS layer sits under the connection's
// accounting, so the 414/431 split and the answer to a too-large head still hold.
func TestTLSKeepsTheTransportLimits(t *testing.T) {
	cfg, cert := tlsConfig(t)
	ts := startServerWith(t, cfg, slog.New(slog.DiscardHandler), io.Discard, "https", pinnedClient(cert))
	// Longer than the read buffer: only the connection's own count of the line can tell 414.
	long := mustStatus(t, ts.do(t, "GET", "/healthz?pad="+strings.Repeat("a", readBufferSize), "", nil), 414)
	if long.ErrorCode(t) != codeURITooLong {
		t.Fatalf("long request line over TLS: %s", long.Body)
	}
	mustStatus(t, ts.do(t, "GET", "/healthz", "", nil, "X-Pad", strings.Repeat("b", readBufferSize)), 431)
}

// The operator's view: the built binary serves HTTPS, and SIGHUP swaps the certificate for new
// connections; a pair that does not load on SIGHUP leaves the previous one serving.
func TestSIGHUPReloadsTheCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := writeCertPair(t, certFile, keyFile, "first")
	p := startCommand(t, exec.Command(awardeeBinary(t), "serve", "--addr", "127.0.0.1:0", "--data", t.TempDir(),
		"--tls-cert", certFile, "--tls-key", keyFile))
	addr := strings.TrimPrefix(p.URL, "http://")
	get := func(hc *http.Client) error {
		res, err := hc.Get("https://" + addr + "/healthz")
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("GET /healthz over TLS: %d", res.StatusCode)
		}
		return nil
	}
	if err := get(pinnedClient(first)); err != nil {
		t.Fatalf("HTTPS with the first certificate: %v", err)
	}

	second := writeCertPair(t, certFile, keyFile, "second")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the second certificate to be served", func() bool { return servedCertificate(t, addr) == "second" })
	if err := get(pinnedClient(second)); err != nil {
		t.Fatalf("HTTPS with the second certificate: %v", err)
	}
	if err := get(pinnedClient(first)); err == nil {
		t.Fatal("a client that trusts only the first certificate still connects after the reload")
	}

	// A half-written renewal: the certificate of one pair, the key of another.
	otherDir := t.TempDir()
	writeCertPair(t, filepath.Join(otherDir, "cert.pem"), keyFile, "mismatched")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the refused reload to be logged", func() bool {
		return strings.Contains(p.stderr.String(), "TLS certificate not reloaded")
	})
	if got := servedCertificate(t, addr); got != "second" {
		t.Fatalf("after a bad reload the server serves %q, want the previous certificate", got)
	}
	if err := get(pinnedClient(second)); err != nil {
		t.Fatalf("HTTPS after a bad reload: %v", err)
	}
}

// Without TLS, SIGHUP is logged and changes nothing: Go's default would end the process.
func TestSIGHUPWithoutTLSKeepsServing(t *testing.T) {
	p := startProcess(t, t.TempDir())
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "SIGHUP to be logged", func() bool { return strings.Contains(p.stderr.String(), "nothing to reload") })
	mustStatus(t, p.do(t, "GET", "/healthz", "", nil), 200)
}

func TestTLSFlagsAreCheckedBeforeAnythingStarts(t *testing.T) {
	for _, c := range []struct{ cert, key string }{{"cert.pem", ""}, {"", "key.pem"}} {
		cfg := defaultConfig()
		cfg.TLSCert, cfg.TLSKey = c.cert, c.key
		err := cfg.validate()
		if err == nil || !strings.Contains(err.Error(), "--tls-cert and --tls-key go together") {
			t.Errorf("cert %q key %q: %v", c.cert, c.key, err)
		}
	}
	// A pair that does not load: no start, no org, no secret printed.
	cfg, _ := tlsConfig(t)
	writeCertPair(t, filepath.Join(t.TempDir(), "cert.pem"), cfg.TLSKey, "other")
	cfg.Addr = "127.0.0.1:0"
	var banner bytes.Buffer
	_, err := newServer(cfg, slog.New(slog.DiscardHandler), &banner)
	if err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Fatalf("a mismatched pair: %v", err)
	}
	if banner.Len() > 0 {
		t.Fatalf("a start that failed printed: %s", banner.String())
	}
	db, err := engine.Open(cfg.Data, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if orgs, err := db.Orgs(); err != nil || len(orgs) > 0 {
		t.Fatalf("a start that failed made orgs %v (%v)", orgs, err)
	}
}

// Over TLS too, a client still sending a refused body reads its 413 rather than a reset: the
// lingering close half-closes after TLS's close_notify and drains what the client still sends.
func TestOversizedBodyOverTLSGets413NotReset(t *testing.T) {
	cfg, cert := tlsConfig(t)
	ts := startServerWith(t, cfg, slog.New(slog.DiscardHandler), io.Discard, "https", pinnedClient(cert))
	body := bytes.Repeat([]byte("a"), 2<<20)
	for i := range 20 {
		r, err := ts.try("POST", "/conversations", "", body)
		if err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		if r.Status != http.StatusRequestEntityTooLarge {
			t.Fatalf("attempt %d: status %d", i, r.Status)
		}
	}
}
