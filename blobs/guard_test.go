package blobs

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestCheckAddrTable(t *testing.T) {
	refused := []string{
		"127.0.0.1", "127.255.255.254", "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1",
		"169.254.169.254", "169.254.0.1", "100.64.0.1", "100.127.255.255", "0.0.0.0", "0.1.2.3",
		"224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1", "192.0.0.8", "192.0.2.1",
		"198.18.0.1", "198.51.100.7", "203.0.113.9", "192.88.99.1",
		"::", "::1", "fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%eth0", "fec0::1", "ff02::1",
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:0.0.0.0",
		"64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::1", "::127.0.0.1", "::8.8.8.8", "100::1",
		"2001:db8::1", "2001::1", "2002:7f00:1::1", "3fff::1",
	}
	for _, s := range refused {
		if err := CheckAddr(netip.MustParseAddr(s)); err == nil {
			t.Errorf("%s allowed, want refused", s)
		}
	}
	allowed := []string{
		"8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.0", "172.15.255.255",
		"172.32.0.0", "192.169.0.1", "11.0.0.1", "2606:4700::1111", "2a00:1450:4001::200e",
		"::ffff:8.8.8.8", "64:ff9b::808:808",
	}
	for _, s := range allowed {
		if err := CheckAddr(netip.MustParseAddr(s)); err != nil {
			t.Errorf("%s refused: %v", s, err)
		}
	}
}

func TestControlRefusesPrivateAddressesAtConnectTime(t *testing.T) {
	var g Guard
	for _, addr := range []string{"127.0.0.1:80", "[::1]:443", "[::ffff:127.0.0.1]:80", "169.254.169.254:80", "10.1.2.3:8080", "[fd00::1]:80", "0.0.0.0:80", "100.64.1.1:80"} {
		err := g.Control("tcp", addr, nil)
		if ReasonOf(err) != ReasonUnsafeHost {
			t.Errorf("Control(%s) = %v, want unsafe_host", addr, err)
		}
	}
	if err := g.Control("tcp4", "8.8.8.8:443", nil); err != nil {
		t.Errorf("public address refused: %v", err)
	}
	if err := g.Control("udp", "8.8.8.8:53", nil); ReasonOf(err) != ReasonUnsafeHost {
		t.Errorf("udp allowed: %v", err)
	}
	if err := (Guard{AllowPrivate: true}).Control("tcp", "127.0.0.1:80", nil); err != nil {
		t.Errorf("AllowPrivate still refuses loopback: %v", err)
	}
}

// countingListener counts accepted connections, to show a refused dial sent nothing at all, and
// signals each one on the returned channel.
func countingListener(t *testing.T) (addr string, accepted *atomic.Int64, each <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted = new(atomic.Int64)
	ch := make(chan struct{}, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ln.Addr().String(), accepted, ch
}

func TestDialerChecksTheResolvedAddress(t *testing.T) {
	addr, accepted, each := countingListener(t)
	_, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// "localhost" is a name: only the address the resolver returns shows it is loopback.
	for _, target := range []string{net.JoinHostPort("localhost", port), addr} {
		c, err := Guard{}.Dialer().DialContext(ctx, "tcp", target)
		if err == nil {
			c.Close()
			t.Fatalf("dial %s succeeded", target)
		}
		if ReasonOf(err) != ReasonUnsafeHost {
			t.Fatalf("dial %s: %v, want unsafe_host", target, err)
		}
	}
	c, err := Guard{AllowPrivate: true}.Dialer().DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial with AllowPrivate: %v", err)
	}
	c.Close()
	// Connections are accepted in order, so once the allowed one is in, any refused dial that
	// had reached the listener would have been counted already.
	select {
	case <-each:
	case <-time.After(5 * time.Second):
		t.Fatal("the allowed connection was never accepted")
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("listener accepted %d connections, want only the allowed one", n)
	}
}

func TestCheckURL(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		url  string
		want Reason
	}{
		{"ftp://example.com/a.png", ReasonScheme},
		{"file:///etc/passwd", ReasonScheme},
		{"data:image/png;base64,AAAA", ReasonScheme},
		{"javascript:alert(1)", ReasonScheme},
		{"//example.com/a.png", ReasonScheme},
		{"http:///a.png", ReasonScheme},
		{"http://127.0.0.1/a.png", ReasonUnsafeHost},
		{"http://localhost/a.png", ReasonUnsafeHost},
		{"http://LOCALHOST./a.png", ReasonUnsafeHost},
		{"http://app.localhost/a.png", ReasonUnsafeHost},
		{"http://[::1]/a.png", ReasonUnsafeHost},
		{"http://[::ffff:127.0.0.1]/a.png", ReasonUnsafeHost},
		{"http://[::ffff:7f00:1]/a.png", ReasonUnsafeHost},
		{"http://[fe80::1%25eth0]/a.png", ReasonUnsafeHost},
		{"http://0.0.0.0/a.png", ReasonUnsafeHost},
		{"http://2130706433/a.png", ReasonUnsafeHost},
		{"http://0x7f000001/a.png", ReasonUnsafeHost},
		{"http://0x7F000001/a.png", ReasonUnsafeHost},
		{"http://0177.0.0.1/a.png", ReasonUnsafeHost},
		{"http://127.1/a.png", ReasonUnsafeHost},
		{"http://0x7f.0.0.1/a.png", ReasonUnsafeHost},
		{"http://127.0.0.1./a.png", ReasonUnsafeHost},
		{"http://%31%32%37.0.0.1/a.png", ReasonScheme}, // not a valid URL to Go
		{"http://08.8.8.8/a.png", ReasonUnsafeHost},
		{"http://134744072/a.png", ReasonUnsafeHost}, // 8.8.8.8, but spelled as one number
		{"http://169.254.169.254/latest/meta-data/", ReasonUnsafeHost},
		{"http://10.0.0.1/a.png", ReasonUnsafeHost},
		{"http://172.16.5.4/a.png", ReasonUnsafeHost},
		{"http://192.168.0.1/a.png", ReasonUnsafeHost},
		{"http://100.64.0.1/a.png", ReasonUnsafeHost},
		{"http://[fc00::1]/a.png", ReasonUnsafeHost},
		{"http://[fd00::1]:8080/a.png", ReasonUnsafeHost},
		{"http://user:pass@127.0.0.1/a.png", ReasonUnsafeHost},
		{"https://8.8.8.8/a.png", ""},
		{"http://[2606:4700::1111]/a.png", ""},
	}
	for _, c := range cases {
		err := Guard{}.CheckURL(ctx, c.url)
		if got := ReasonOf(err); got != c.want {
			t.Errorf("CheckURL(%q) = %v, want reason %q", c.url, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "127.0.0.1") && !strings.Contains(c.url, "127.0.0.1") {
			t.Errorf("CheckURL(%q) leaks a resolved address: %v", c.url, err)
		}
	}
	// AllowPrivate lifts the address rules only.
	lax := Guard{AllowPrivate: true}
	for _, u := range []string{"http://127.0.0.1/a.png", "http://localhost/a.png", "http://[::1]/", "http://10.0.0.1/"} {
		if err := lax.CheckURL(ctx, u); err != nil {
			t.Errorf("AllowPrivate CheckURL(%q) = %v", u, err)
		}
	}
	for _, u := range []string{"ftp://127.0.0.1/a.png", "http://2130706433/"} {
		if err := lax.CheckURL(ctx, u); err == nil {
			t.Errorf("AllowPrivate CheckURL(%q) accepted", u)
		}
	}
}
