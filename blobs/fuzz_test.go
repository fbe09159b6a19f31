package blobs

import (
	"bytes"
	"image/color"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

// FuzzCheckImage: whatever the bytes, the check neither panics nor accepts an image outside
// the limits, and a refusal always carries one of its two reasons.
func FuzzCheckImage(f *testing.F) {
	for _, fx := range fixtures(f) {
		f.Add(fx.body)
	}
	f.Add([]byte(htmlPage))
	f.Add([]byte(svgImage))
	f.Add(pngHeaderClaiming(f, 10000, 5001))
	f.Add(webpBytes(1, 1, color.NRGBA{A: 255}))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := CheckImage(bytes.NewReader(b))
		if err != nil {
			if r := ReasonOf(err); r != ReasonNotImage && r != ReasonTooLarge {
				t.Fatalf("reason %q", r)
			}
			return
		}
		if info.Width <= 0 || info.Height <= 0 || int64(info.Width)*int64(info.Height) > MaxPixels {
			t.Fatalf("accepted %+v", info)
		}
		switch info.MIME {
		case "image/png", "image/jpeg", "image/gif", "image/webp":
		default:
			t.Fatalf("mime %q", info.MIME)
		}
	})
}

// FuzzCheckURL: no URL the guard accepts without DNS names a refused address in any spelling
// Go's own parser understands.
func FuzzCheckURL(f *testing.F) {
	for _, s := range []string{"http://8.8.8.8/", "http://127.0.0.1/", "http://2130706433/", "http://[::ffff:7f00:1]/",
		"https://example.com/a.png", "http://0x7f.1/", "http://[fe80::1%25eth0]/", "http://LOCALHOST/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := checkScheme(raw)
		if err != nil {
			return
		}
		host, addr, err := Guard{}.checkHost(u)
		if err != nil {
			if ReasonOf(err) != ReasonUnsafeHost {
				t.Fatalf("reason %q", ReasonOf(err))
			}
			return
		}
		if addr.IsValid() && CheckAddr(addr) != nil {
			t.Fatalf("accepted refused address %s from %q", addr, raw)
		}
		if a, err := netip.ParseAddr(strings.TrimSuffix(host, ".")); err == nil && CheckAddr(a) != nil {
			t.Fatalf("accepted host %q that parses as refused %s", host, a)
		}
		if _, err := url.Parse(raw); err != nil {
			t.Fatalf("accepted an unparsable URL %q", raw)
		}
	})
}
