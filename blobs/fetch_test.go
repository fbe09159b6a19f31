package blobs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

// imageServer is the local source every fetch test downloads from.
type imageServer struct {
	*httptest.Server
	requests    atomic.Int64
	connections atomic.Int64
	streamed    atomic.Int64     // bytes /stream managed to write
	streamDone  chan struct{}    // closed when /stream's handler returns
	release     chan struct{}    // closed at cleanup, unblocks hanging handlers
	headers     chan http.Header // what /headers saw
	fixtures    map[string]fixture
}

const streamTotal = 64 << 20

func newImageServer(t testing.TB) *imageServer {
	t.Helper()
	s := &imageServer{
		streamDone: make(chan struct{}),
		release:    make(chan struct{}),
		headers:    make(chan http.Header, 8),
		fixtures:   map[string]fixture{},
	}
	for _, f := range fixtures(t) {
		s.fixtures[f.name] = f
	}
	exact := padTo(pngBytes(t, 4, 4), DefaultMaxBytes)
	mux := http.NewServeMux()
	mux.HandleFunc("/img/{name}", func(w http.ResponseWriter, r *http.Request) {
		f, ok := s.fixtures[r.PathValue("name")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		// A source's label is never trusted, so serve every image with a useless one.
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(f.body)
	})
	mux.HandleFunc("/html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write([]byte(htmlPage))
	})
	mux.HandleFunc("/svg", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/svg+xml")
		_, _ = w.Write([]byte(svgImage))
	})
	mux.HandleFunc("/exact", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(exact)
	})
	mux.HandleFunc("/one-over", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(DefaultMaxBytes+1))
		_, _ = w.Write(padTo(pngBytes(t, 4, 4), DefaultMaxBytes+1))
	})
	mux.HandleFunc("/one-over-chunked", func(w http.ResponseWriter, r *http.Request) {
		body := padTo(pngBytes(t, 4, 4), DefaultMaxBytes+1)
		for len(body) > 0 { // several writes and no Content-Length: chunked
			n := min(len(body), 1<<20)
			_, _ = w.Write(body[:n])
			body = body[n:]
		}
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		defer close(s.streamDone)
		chunk := padTo(pngBytes(t, 4, 4), 64<<10)
		for s.streamed.Load() < streamTotal {
			n, err := w.Write(chunk)
			s.streamed.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/declared-oversize", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(DefaultMaxBytes+1))
		_, _ = w.Write(s.fixtures["png"].body)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-s.release:
		}
	})
	mux.HandleFunc("/short-body", func(w http.ResponseWriter, r *http.Request) {
		body := s.fixtures["png"].body
		w.Header().Set("Content-Length", strconv.Itoa(len(body)+100))
		_, _ = w.Write(body) // then the handler ends: the connection closes short
	})
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-s.release:
		}
	})
	mux.HandleFunc("/hang-body", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(pngBytes(t, 4, 4)[:20])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-s.release:
		}
	})
	mux.HandleFunc("/redirect/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.PathValue("n")) // redirects still to go
		if n <= 0 {
			_, _ = w.Write(s.fixtures["png"].body)
			return
		}
		http.Redirect(w, r, fmt.Sprintf("/redirect/%d", n-1), http.StatusFound)
	})
	mux.HandleFunc("/redirect-to", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Query().Get("u"), http.StatusFound)
	})
	mux.HandleFunc("/cookie-then-headers", func(w http.ResponseWriter, r *http.Request) {
		s.headers <- r.Header.Clone()
		http.SetCookie(w, &http.Cookie{Name: "session", Value: "secret"})
		http.Redirect(w, r, "/headers", http.StatusFound)
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		s.headers <- r.Header.Clone()
		_, _ = w.Write(s.fixtures["png"].body)
	})
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.PathValue("code"))
		w.WriteHeader(code)
		_, _ = w.Write(s.fixtures["png"].body)
	})
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		mux.ServeHTTP(w, r)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.connections.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	t.Cleanup(func() { close(s.release) }) // runs first: unblock, then close
	return s
}

// padTo appends zeros to b up to n bytes: a header decode reads no further than the header,
// so the result is still an image of b's size.
func padTo(b []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, b)
	return out
}

func fetcherAndStore(t testing.TB, opts FetchOptions) (*Fetcher, *Store, string) {
	t.Helper()
	f := NewFetcher(opts)
	t.Cleanup(f.Close)
	dir := t.TempDir()
	return f, openStore(t, dir, Options{}), dir
}

// assertNothingStored checks a refused fetch left neither a blob nor a temporary file.
func assertNothingStored(t *testing.T, s *Store, dir string) {
	t.Helper()
	if hs := walkHashes(t, s); len(hs) != 0 {
		t.Fatalf("a refused fetch stored %v", hs)
	}
	if left := tmpEntries(t, dir); len(left) != 0 {
		t.Fatalf("a refused fetch left temporary files: %v", left)
	}
}

func TestFetchImageStoresEachFormat(t *testing.T) {
	srv := newImageServer(t)
	f, s, _ := fetcherAndStore(t, FetchOptions{AllowPrivate: true})
	for name, fx := range srv.fixtures {
		t.Run(name, func(t *testing.T) {
			a, err := f.FetchImage(context.Background(), s, srv.URL+"/img/"+name)
			if err != nil {
				t.Fatalf("FetchImage: %v", err)
			}
			want := Asset{Hash: blake3.Sum256(fx.body), Size: int64(len(fx.body)),
				ImageInfo: ImageInfo{MIME: fx.mime, Ext: fx.ext, Width: fx.width, Height: fx.height}}
			if a != want {
				t.Fatalf("got %+v, want %+v", a, want)
			}
			got, err := readAll(t, s, a.Hash)
			if err != nil || !bytes.Equal(got, fx.body) {
				t.Fatalf("stored bytes differ: %v", err)
			}
		})
	}
}

func TestFetchImageDeduplicates(t *testing.T) {
	srv := newImageServer(t)
	f, s, dir := fetcherAndStore(t, FetchOptions{AllowPrivate: true})
	first, err := f.FetchImage(context.Background(), s, srv.URL+"/img/png")
	if err != nil {
		t.Fatal(err)
	}
	// The same bytes by another road, several at once.
	var wg sync.WaitGroup
	results := make([]Asset, 8)
	errs := make([]error, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = f.FetchImage(context.Background(), s, srv.URL+"/redirect/1")
		}()
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil || results[i].Hash != first.Hash || !results[i].Existed {
			t.Fatalf("fetch %d: %+v, %v", i, results[i], errs[i])
		}
	}
	if hs := walkHashes(t, s); len(hs) != 1 {
		t.Fatalf("%d blobs stored, want 1", len(hs))
	}
	if left := tmpEntries(t, dir); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestFetchImageRefusals(t *testing.T) {
	srv := newImageServer(t)
	cases := []struct {
		path string
		want Reason
	}{
		{"/html", ReasonNotImage},
		{"/svg", ReasonNotImage},
		{"/one-over", ReasonTooLarge},
		{"/one-over-chunked", ReasonTooLarge},
		{"/short-body", ReasonFetchFailed},
		{"/status/404", ReasonFetchFailed},
		{"/status/500", ReasonFetchFailed},
		{"/status/204", ReasonNotImage}, // 2xx with no body: nothing to decode
		{"/redirect/5", ""},
		{"/redirect/6", ReasonFetchFailed},
		{"/redirect-to?u=ftp://example.com/a.png", ReasonScheme},
		{"/redirect-to?u=file:///etc/passwd", ReasonScheme},
		{"/exact", ""},
	}
	for _, c := range cases {
		t.Run(strings.TrimPrefix(c.path, "/"), func(t *testing.T) {
			f, s, dir := fetcherAndStore(t, FetchOptions{AllowPrivate: true})
			u := srv.URL + c.path
			a, err := f.FetchImage(context.Background(), s, u)
			if got := ReasonOf(err); got != c.want {
				t.Fatalf("reason %q (%v), want %q", got, err, c.want)
			}
			if c.want == "" {
				if a.Width != 4 && a.Width != 7 {
					t.Fatalf("asset %+v", a)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.URL != u {
				t.Fatalf("error does not carry the URL as given: %#v", err)
			}
			if strings.Contains(e.Error(), "127.0.0.1") || strings.Contains(e.Error(), dir) {
				t.Fatalf("message leaks internals: %q", e.Error())
			}
			assertNothingStored(t, s, dir)
		})
	}
}

func TestFetchStopsReadingAtTheLimit(t *testing.T) {
	srv := newImageServer(t)
	f, s, dir := fetcherAndStore(t, FetchOptions{AllowPrivate: true})
	_, err := f.FetchImage(context.Background(), s, srv.URL+"/stream")
	if ReasonOf(err) != ReasonTooLarge {
		t.Fatalf("reason %v, want too_large", err)
	}
	select {
	case <-srv.streamDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the source kept sending: the fetch did not hang up")
	}
	// What the source got out is what was read (15 MiB + 1 and a little) plus what the
	// socket buffers held when the fetch hung up: far from the whole body.
	if n := srv.streamed.Load(); n >= streamTotal/2 {
		t.Fatalf("the source wrote %d of %d bytes: the fetch read on past the limit", n, streamTotal)
	}
	t.Logf("the source got %d bytes out before the fetch hung up", srv.streamed.Load())
	assertNothingStored(t, s, dir)
}

func TestFetchTimesOut(t *testing.T) {
	srv := newImageServer(t)
	for _, path := range []string{"/hang", "/hang-body"} {
		t.Run(strings.TrimPrefix(path, "/"), func(t *testing.T) {
			f, s, dir := fetcherAndStore(t, FetchOptions{AllowPrivate: true, Timeout: 200 * time.Millisecond})
			start := time.Now()
			_, err := f.FetchImage(context.Background(), s, srv.URL+path)
			if ReasonOf(err) != ReasonTimeout {
				t.Fatalf("reason %v, want timeout", err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("the fetch took %v with a 200ms limit", took)
			}
			assertNothingStored(t, s, dir)
		})
	}
}

func TestFetchSendsNoCredentials(t *testing.T) {
	srv := newImageServer(t)
	f, s, _ := fetcherAndStore(t, FetchOptions{AllowPrivate: true})
	u := strings.Replace(srv.URL, "http://", "http://alice:hunter2@", 1) + "/cookie-then-headers"
	if _, err := f.FetchImage(context.Background(), s, u); err != nil {
		t.Fatal(err)
	}
	for hop := range 2 { // the first request and the redirect after the cookie was set
		h := <-srv.headers
		for _, name := range []string{"Authorization", "Cookie", "Referer", "Proxy-Authorization"} {
			if v := h.Get(name); v != "" {
				t.Errorf("hop %d: %s forwarded: %q", hop, name, v)
			}
		}
		if ua := h.Get("User-Agent"); ua != UserAgent {
			t.Errorf("hop %d: User-Agent %q, want %q", hop, ua, UserAgent)
		}
		for name := range h {
			switch name {
			case "User-Agent", "Accept":
			default:
				t.Errorf("hop %d: unexpected header sent: %s: %q", hop, name, h.Get(name))
			}
		}
	}
}

func TestFetchRefusesADeclaredOversizeBodyWithoutReadingIt(t *testing.T) {
	srv := newImageServer(t)
	// The body never comes: only an answer from the declared length can be quick.
	f, s, dir := fetcherAndStore(t, FetchOptions{AllowPrivate: true, Timeout: 3 * time.Second})
	start := time.Now()
	_, err := f.FetchImage(context.Background(), s, srv.URL+"/declared-oversize")
	if ReasonOf(err) != ReasonTooLarge {
		t.Fatalf("reason %v, want too_large", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("took %v: the fetch waited for a body it should not read", took)
	}
	assertNothingStored(t, s, dir)
}

func TestFetchRefusesForbiddenHostsWithoutARequest(t *testing.T) {
	srv := newImageServer(t)
	f, s, dir := fetcherAndStore(t, FetchOptions{}) // AllowPrivate off, as in production
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	hosts := []string{
		"127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "2130706433",
		"0x7f000001", "0177.0.0.1", "127.1", "169.254.169.254", "10.0.0.1", "172.16.0.1",
		"192.168.1.1", "100.64.0.1", "[fc00::1]", "[fd00::1]", "[fe80::1]",
	}
	for _, h := range hosts {
		for _, path := range []string{"/img/png", "/redirect-to?u=" + srv.URL + "/img/png"} {
			u := "http://" + h + ":" + port + path
			_, err := f.FetchImage(context.Background(), s, u)
			if ReasonOf(err) != ReasonUnsafeHost {
				t.Errorf("%s: %v, want unsafe_host", u, err)
			}
		}
	}
	if n, c := srv.requests.Load(), srv.connections.Load(); n != 0 || c != 0 {
		t.Fatalf("the image server saw %d requests on %d connections from refused fetches", n, c)
	}
	assertNothingStored(t, s, dir)
}

func TestRedirectCheckRefusesPrivateTargets(t *testing.T) {
	f := NewFetcher(FetchOptions{})
	t.Cleanup(f.Close)
	via := []*http.Request{httptest.NewRequest(http.MethodGet, "https://example.com/a.png", nil)}
	for _, target := range []string{"http://10.0.0.1/a.png", "http://169.254.169.254/", "http://[::ffff:192.168.0.1]/", "http://localhost/", "http://2130706433/"} {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		if err := f.checkRedirect(req, via); ReasonOf(err) != ReasonUnsafeHost {
			t.Errorf("redirect to %s: %v, want unsafe_host", target, err)
		}
	}
	req := httptest.NewRequest(http.MethodGet, "https://u:p@example.org/b.png", nil)
	req.Header.Set("Referer", "https://example.com/a.png")
	req.Header.Set("Cookie", "a=b")
	if err := f.checkRedirect(req, via); err != nil {
		t.Fatalf("redirect to a public host: %v", err)
	}
	if req.URL.User != nil || req.Header.Get("Referer") != "" || req.Header.Get("Cookie") != "" {
		t.Fatalf("credentials kept on a redirect: %v %v", req.URL, req.Header)
	}
}
