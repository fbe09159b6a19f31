package main

import (
	"net/http"
	"strings"
	"testing"
)

// TestDashboardFilesAreServedCompressedAndRevalidated: /app/ answers the embedded files with
// their types, gzip when asked, an ETag that answers 304, and a CSP that allows only our origin.
func TestDashboardFilesAreServedCompressedAndRevalidated(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	get := func(path string, headers ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", ts.URL+path, nil)
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		// The raw transport: http.Client would decompress and hide Content-Encoding.
		res, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	for path, ctype := range map[string]string{"/app/": "text/html", "/app/app.js": "text/javascript", "/app/app.css": "text/css"} {
		res := get(path, "Accept-Encoding", "gzip")
		if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), ctype) || res.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("%s: %d %v", path, res.StatusCode, res.Header)
		}
		if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
			t.Fatalf("%s: CSP %q", path, csp)
		}
		etag := res.Header.Get("ETag")
		if again := get(path, "If-None-Match", etag); etag == "" || again.StatusCode != 304 {
			t.Fatalf("%s: ETag %q answered %d to If-None-Match", path, etag, again.StatusCode)
		}
	}
	if res := get("/app/app.js"); res.Header.Get("Content-Encoding") != "" {
		t.Fatal("gzip sent to a client that did not ask for it")
	}
	if res := get("/app/nothing.js"); res.StatusCode != 404 {
		t.Fatalf("a missing file: %d", res.StatusCode)
	}
}

// The bare path a person types reaches the dashboard.
func TestBareAppPathRedirects(t *testing.T) {
	ts := newTestServer(t)
	req, err := http.NewRequest("GET", ts.URL+"/app", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if loc := res.Header.Get("Location"); res.StatusCode != http.StatusPermanentRedirect || (loc != "/app/" && loc != ts.URL+"/app/") {
		t.Fatalf("GET /app: %d to %q, want 308 to /app/", res.StatusCode, res.Header.Get("Location"))
	}
}
