package web

import (
	"bytes"
	"compress/gzip"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// serve runs h on a real loopback listener and returns its base URL.
func serve(t *testing.T, h fasthttp.RequestHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	// A transport that does not decode gzip itself, so the test sees the bytes served.
	res, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res, body
}

func TestAssetServesGzipETagAnd304(t *testing.T) {
	body := []byte(strings.Repeat("console.log('awardee');\n", 200))
	a := NewAsset("x.js", body, "public, max-age=60")
	url := serve(t, a.Serve)

	plain, got := get(t, url)
	if plain.StatusCode != 200 || !bytes.Equal(got, body) || plain.Header.Get("Content-Encoding") != "" {
		t.Fatalf("plain: %d, %d bytes, encoding %q", plain.StatusCode, len(got), plain.Header.Get("Content-Encoding"))
	}
	if ct := plain.Header.Get("Content-Type"); ct != "text/javascript; charset=utf-8" {
		t.Fatalf("content type %q", ct)
	}
	zipped, zbody := get(t, url, "Accept-Encoding", "gzip, br")
	if zipped.Header.Get("Content-Encoding") != "gzip" || len(zbody) >= len(body) || zipped.Header.Get("Vary") != "Accept-Encoding" {
		t.Fatalf("gzip: encoding %q, %d bytes of %d, vary %q", zipped.Header.Get("Content-Encoding"), len(zbody), len(body), zipped.Header.Get("Vary"))
	}
	zr, err := gzip.NewReader(bytes.NewReader(zbody))
	if err != nil {
		t.Fatal(err)
	}
	if unzipped, _ := io.ReadAll(zr); !bytes.Equal(unzipped, body) {
		t.Fatal("the gzip encoding is not the file")
	}
	// Strong tags, different per representation, equal across identical bytes, changed by any byte.
	etag, zetag := plain.Header.Get("ETag"), zipped.Header.Get("ETag")
	if !strings.HasPrefix(etag, `"`) || etag == zetag || NewAsset("y.js", body, "").ETag() != etag {
		t.Fatalf("etags %s and %s", etag, zetag)
	}
	if NewAsset("x.js", append(body[:len(body):len(body)], ' '), "").ETag() == etag {
		t.Fatal("the ETag does not follow the bytes")
	}
	for _, tc := range []struct {
		inm, enc string
		want     int
	}{
		{etag, "", 304}, {zetag, "gzip", 304}, {"W/" + etag, "", 304}, {`"other", ` + etag, "", 304}, {"*", "", 304},
		{`"other"`, "", 200}, {zetag, "", 200}, {etag, "gzip", 200},
	} {
		res, b := get(t, url, "If-None-Match", tc.inm, "Accept-Encoding", tc.enc)
		if res.StatusCode != tc.want || (tc.want == 304 && len(b) != 0) {
			t.Errorf("If-None-Match %s, Accept-Encoding %q: %d with %d bytes, want %d", tc.inm, tc.enc, res.StatusCode, len(b), tc.want)
		}
		if res.Header.Get("Cache-Control") != "public, max-age=60" {
			t.Errorf("Cache-Control %q", res.Header.Get("Cache-Control"))
		}
	}
}

// The widget's whole weight: it loads nothing besides widget.js (its styles are inside).
func TestWidgetIsAtMost20KBGzipped(t *testing.T) {
	w, err := NewWidget()
	if err != nil {
		t.Fatal(err)
	}
	res, body := get(t, serve(t, w.ServeScript)+"/widget.js", "Accept-Encoding", "gzip")
	if res.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("widget.js is not served gzipped (%q)", res.Header.Get("Content-Encoding"))
	}
	const limit = 20 * 1024
	t.Logf("widget.js: %d bytes, %d gzipped", len(w.Script().Body()), len(body))
	if len(body) > limit {
		t.Fatalf("widget.js is %d bytes gzipped; the limit is %d", len(body), limit)
	}
	// What a strict CSP would refuse, or what would touch the page's cookies; the browser tests
	// check the requests themselves.
	for _, forbidden := range []string{"eval(", "new Function", "document.cookie", ".innerHTML", ".style.", "'style'", "createElement('style')", "createElement('link')"} {
		if bytes.Contains(w.Script().Body(), []byte(forbidden)) {
			t.Errorf("widget.js uses %s", forbidden)
		}
	}
}

func TestDemoEmbedsOnlyAWellFormedKey(t *testing.T) {
	w, err := NewWidget()
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, w.ServeDemo)
	res, body := get(t, url+"/demo?key=wk_abcdefghijklmnopqrstuvwxyz234567")
	if res.StatusCode != 200 || !bytes.Contains(body, []byte(`data-awardee-key="wk_abcdefghijklmnopqrstuvwxyz234567"`)) {
		t.Fatalf("demo: %d %s", res.StatusCode, body)
	}
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
		t.Fatalf("demo CSP %q", csp)
	}
	_, body = get(t, url+`/demo?key=wk_x"><script>alert(1)</script>`)
	if bytes.Contains(body, []byte("alert(1)")) || bytes.Contains(body, []byte("data-awardee-key")) {
		t.Fatalf("a malformed key reached the page: %s", body)
	}
}
