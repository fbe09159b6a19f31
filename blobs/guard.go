package blobs

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// deniedRange is one row of the table of destinations no fetch may reach.
type deniedRange struct {
	prefix netip.Prefix
	why    string
}

// deniedV4 lists every IPv4 range a server-side fetch must not reach: everything in the IANA
// special-purpose registry that is not globally reachable, plus multicast and the reserved
// class E (which holds the limited broadcast 255.255.255.255). It is a superset of Stripe
// smokescreen's default deny rules (RFC 1918, loopback, link-local, unspecified, multicast and
// anything that is not global unicast). IPv4-mapped, NAT64 and IPv4-compatible IPv6 forms are
// unwrapped and checked against this same table.
var deniedV4 = []deniedRange{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network (0.0.0.0 reaches the local host on Linux)"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private (RFC 1918)"},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT (RFC 6598)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local, cloud metadata at 169.254.169.254"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private (RFC 1918)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments, DS-Lite, NAT64 discovery"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation (TEST-NET-1)"},
	{netip.MustParsePrefix("192.88.99.0/24"), "6to4 relay anycast (deprecated)"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private (RFC 1918)"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking (RFC 2544)"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation (TEST-NET-2)"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation (TEST-NET-3)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved, and 255.255.255.255 broadcast"},
}

// IPv6 is allowed only inside global unicast 2000::/3 (every public allocation lives there),
// which by itself refuses ::, ::1, ULA fc00::/7, link-local fe80::/10, site-local fec0::/10,
// multicast ff00::/8, discard 100::/64 and the local-use NAT64 prefix 64:ff9b:1::/48. Inside
// 2000::/3 these are refused as well. Forms that embed an IPv4 address are unwrapped first
// (see embeddedV4), so a private IPv4 address cannot hide inside an IPv6 one.
var deniedV6 = []deniedRange{
	{netip.MustParsePrefix("2001::/23"), "IETF protocol assignments: Teredo, benchmarking, ORCHID"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("2002::/16"), "6to4, embeds an IPv4 address"},
	{netip.MustParsePrefix("3fff::/20"), "documentation (RFC 9637)"},
}

var (
	globalUnicastV6 = netip.MustParsePrefix("2000::/3")
	// nat64 is the well-known NAT64 prefix (RFC 6052): a host behind DNS64 sees every IPv4
	// destination as 64:ff9b::a.b.c.d, so the embedded address decides.
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
)

// CheckAddr reports why a fetch must not connect to addr, or nil when addr is a public unicast
// address. IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) forms are judged by the
// IPv4 address they carry; the deprecated IPv4-compatible form ::a.b.c.d lies outside 2000::/3
// and is refused outright.
func CheckAddr(addr netip.Addr) error {
	if !addr.IsValid() {
		return fmt.Errorf("not an IP address")
	}
	addr = addr.WithZone("")
	if v4, ok := embeddedV4(addr); ok {
		addr = v4
	}
	if addr.Is4() {
		for _, r := range deniedV4 {
			if r.prefix.Contains(addr) {
				return fmt.Errorf("%s is %s", addr, r.why)
			}
		}
		return nil
	}
	if !globalUnicastV6.Contains(addr) {
		return fmt.Errorf("%s is not global unicast IPv6 (loopback, ULA, link-local, multicast or reserved)", addr)
	}
	for _, r := range deniedV6 {
		if r.prefix.Contains(addr) {
			return fmt.Errorf("%s is %s", addr, r.why)
		}
	}
	return nil
}

// embeddedV4 returns the IPv4 address an IPv6 address stands for, if it is one of the forms
// that a stack routes to that IPv4 address.
func embeddedV4(addr netip.Addr) (netip.Addr, bool) {
	if addr.Is4In6() {
		return addr.Unmap(), true
	}
	if !addr.Is6() {
		return netip.Addr{}, false
	}
	if nat64.Contains(addr) {
		b := addr.As16()
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	}
	return netip.Addr{}, false
}

// Guard holds the address rules every server-side fetch obeys: attachment downloads here and
// webhook deliveries elsewhere. The zero value is the safe production setting. A Guard is
// immutable and safe for concurrent use.
type Guard struct {
	// AllowPrivate lifts the address rules (CheckAddr) and nothing else: the scheme and
	// host-spelling rules stay. For development and tests only.
	AllowPrivate bool
	// Resolver resolves names for CheckURL and for the dialer; nil is net.DefaultResolver.
	Resolver *net.Resolver
}

// Control is a net.Dialer Control function. The dialer calls it for every address it is about
// to connect to, after DNS resolution and once per attempt, so a name that resolves to a
// private address, a name that changes its answer between a pre-check and the connection (DNS
// rebinding) and a redirect to a private host are all refused here, before any packet is sent.
// The error it returns is an *Error with ReasonUnsafeHost.
func (g Guard) Control(network, address string, _ syscall.RawConn) error {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return &Error{Reason: ReasonUnsafeHost, Message: msgUnsafeHost, Cause: fmt.Errorf("network %q refused", network)}
	}
	if g.AllowPrivate {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &Error{Reason: ReasonUnsafeHost, Message: msgUnsafeHost, Cause: fmt.Errorf("dial address %q: %w", address, err)}
	}
	if err := CheckAddr(ap.Addr()); err != nil {
		return &Error{Reason: ReasonUnsafeHost, Message: msgUnsafeHost, Cause: err}
	}
	return nil
}

// Dialer returns a dialer whose every connection passes Control. It keeps no state, so each
// caller may have its own.
func (g Guard) Dialer() *net.Dialer {
	return &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		Resolver:  g.Resolver,
		Control:   g.Control,
	}
}

// Transport returns an HTTP transport that connects only through Dialer. It never uses a proxy
// from the environment: through a proxy the dialer would check the proxy's address instead of
// the destination's. It does not ask for compression, so the bytes read are the bytes served.
func (g Guard) Transport() *http.Transport {
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            g.Dialer().DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           64,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        60 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	}
}

// CheckURL is the pre-check for a URL this server is asked to fetch later (a webhook endpoint
// at registration, an attachment before it is queued): the scheme is http or https, the host
// is spelled in a form every parser agrees on (see checkHost), and, unless AllowPrivate, every
// address the host resolves to now is public. It is a courtesy that gives an early, clear
// answer; the guarantee is Control at connect time, because DNS answers change.
// Its error is an *Error with ReasonScheme or ReasonUnsafeHost (a name that does not resolve is
// ReasonFetchFailed).
func (g Guard) CheckURL(ctx context.Context, rawURL string) error {
	u, err := checkScheme(rawURL)
	if err != nil {
		return err
	}
	host, addr, err := g.checkHost(u)
	if err != nil {
		return err
	}
	if g.AllowPrivate || addr.IsValid() {
		return nil
	}
	res := g.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	addrs, err := res.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return &Error{Reason: ReasonFetchFailed, Message: "the URL's host name does not resolve", Cause: err}
	}
	for _, a := range addrs {
		if err := CheckAddr(a); err != nil {
			return &Error{Reason: ReasonUnsafeHost, Message: msgUnsafeHost, Cause: fmt.Errorf("%s resolves to %w", host, err)}
		}
	}
	return nil
}

// checkScheme parses rawURL and accepts only absolute http and https URLs with a host.
func checkScheme(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, &Error{Reason: ReasonScheme, Message: msgScheme, Cause: err}
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return nil, &Error{Reason: ReasonScheme, Message: msgScheme, Cause: fmt.Errorf("scheme %q, host %q", u.Scheme, u.Host)}
	}
	return u, nil
}

// checkHost applies the rules that need no DNS: names of the local host are refused, a host
// that looks numeric must be a canonical dotted-quad or a bracketed IPv6 literal, and a literal
// address must pass CheckAddr unless AllowPrivate. It returns the host and, for a literal, its
// address.
//
// The numeric rule follows the WHATWG URL standard, under which a host whose last label is a
// number is an IPv4 address: browsers and curl read 2130706433, 0x7f000001, 0177.0.0.1 and
// 127.1 as 127.0.0.1, while Go's resolver takes them for names. A URL that two parsers read
// differently is refused whatever address it denotes.
func (g Guard) checkHost(u *url.URL) (string, netip.Addr, error) {
	host := strings.ToLower(u.Hostname())
	bare := strings.TrimSuffix(host, ".")
	if bare == "localhost" || strings.HasSuffix(bare, ".localhost") {
		if g.AllowPrivate {
			return host, netip.Addr{}, nil
		}
		return "", netip.Addr{}, &Error{Reason: ReasonUnsafeHost, Message: msgUnsafeHost, Cause: fmt.Errorf("host %q names the local host", host)}
	}
	addr, isIP, err := parseHostAddr(bare)
	if err != nil {
		return "", netip.Addr{}, &Error{Reason: ReasonUnsafeHost, Message: msgUnsafeHost, Cause: err}
	}
	if !isIP {
		return host, netip.Addr{}, nil
	}
	if !g.AllowPrivate {
		if err := CheckAddr(addr); err != nil {
			return "", netip.Addr{}, &Error{Reason: ReasonUnsafeHost, Message: msgUnsafeHost, Cause: err}
		}
	}
	return host, addr, nil
}

// parseHostAddr tells whether host (without brackets, lower case, no trailing dot) is an IP
// literal and returns it. A host that an IPv4 parser would take as a number but that is not a
// canonical dotted-quad is an error.
func parseHostAddr(host string) (netip.Addr, bool, error) {
	if strings.Contains(host, ":") {
		addr, err := netip.ParseAddr(host)
		if err != nil {
			return netip.Addr{}, false, fmt.Errorf("host %q is not a valid IPv6 literal", host)
		}
		return addr, true, nil
	}
	labels := strings.Split(host, ".")
	if !looksNumeric(labels[len(labels)-1]) {
		return netip.Addr{}, false, nil
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || !addr.Is4() || addr.String() != host {
		return netip.Addr{}, false, fmt.Errorf("host %q is a non-canonical IPv4 spelling", host)
	}
	return addr, true, nil
}

// looksNumeric reports whether a label is a number to the WHATWG IPv4 parser: decimal digits,
// or 0x followed by hex digits (also "0x" alone).
func looksNumeric(label string) bool {
	if label == "" {
		return false
	}
	digits, isHex := label, false
	if strings.HasPrefix(label, "0x") {
		digits, isHex = label[2:], true
	}
	for _, c := range digits {
		switch {
		case c >= '0' && c <= '9':
		case isHex && c >= 'a' && c <= 'f':
		default:
			return false
		}
	}
	return true
}
