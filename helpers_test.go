package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
)

// testServer is the real server on a loopback port with its own data directory, and a client
// of its API.
type testServer struct {
	*server
	*apiClient
	dir string
}

type testOrg struct {
	engine.CreatedOrg
}

// newTestServer starts the real server on 127.0.0.1:0 over a fresh data directory and stops it
// when the test ends. tweak may adjust the configuration first.
func newTestServer(t testing.TB, tweak ...func(*Config)) *testServer {
	t.Helper()
	cfg := defaultConfig()
	cfg.Data = t.TempDir()
	cfg.ShutdownTimeout = 5 * time.Second
	for _, f := range tweak {
		f(&cfg)
	}
	return startTestServer(t, cfg)
}

// startTestServer serves cfg (whose data directory may already hold a database).
func startTestServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	return startServerWith(t, cfg, slog.New(slog.DiscardHandler), io.Discard, "http", newAPIClient("").hc)
}

// startServerWith is startTestServer with the caller's logger, banner writer and client: the
// client decides the scheme (https when it is pinned to the server's certificate).
func startServerWith(t testing.TB, cfg Config, logger *slog.Logger, banner io.Writer, scheme string, hc *http.Client) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr = ln.Addr().String()
	srv, err := newServer(cfg, logger, banner)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	ts := &testServer{server: srv, apiClient: &apiClient{URL: scheme + "://" + cfg.Addr, hc: hc}, dir: cfg.Data}
	t.Cleanup(func() {
		ts.stop(t)
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	// fasthttp's Shutdown finds nothing to stop if Serve has not registered its listener yet, and
	// Serve would then run forever: return only once the server answers.
	testkit.WaitFor(t, "the test server to answer", func() bool {
		_, err := ts.try("GET", "/healthz", "", nil)
		return err == nil
	})
	return ts
}

func (ts *testServer) stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Close(ctx); err != nil {
		t.Errorf("close: %v", err)
	}
}

// newOrg creates an org with the given rate window; rate 0 gives a window so wide that only
// tests about rate limits ever meet it.
func (ts *testServer) newOrg(t testing.TB, rate float64, burst int) testOrg {
	t.Helper()
	if rate == 0 {
		rate, burst = 1e6, 1e6
	}
	created, err := ts.db.CreateOrg(context.Background(), engine.NewOrg{Name: t.Name(), Rate: rate, Burst: burst})
	if err != nil {
		t.Fatal(err)
	}
	return testOrg{created}
}

// apiClient is a real HTTP client of one server's API, whether the server runs in process
// (testServer) or as the built binary (process): every test talks HTTP through it.
type apiClient struct {
	URL string
	hc  *http.Client
}

func newAPIClient(baseURL string) *apiClient {
	return &apiClient{URL: baseURL, hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128}}}
}

// resp is one real HTTP exchange's outcome.
type resp struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into a generic map, failing the test if it is not a JSON object.
func (r resp) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	r.Decode(t, &m)
	return m
}

// Decode decodes the body into v, failing the test if it does not decode.
func (r resp) Decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("body (status %d) does not decode into %T: %v: %s", r.Status, v, err, r.Body)
	}
}

// ErrorCode is the envelope's error.code, failing the test when the body is not an error
// envelope.
func (r resp) ErrorCode(t testing.TB) string {
	t.Helper()
	var env struct {
		Error *struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	r.Decode(t, &env)
	if env.Error == nil {
		t.Fatalf("status %d without an error envelope: %s", r.Status, r.Body)
	}
	return env.Error.Code
}

// do sends one request; body may be nil, a string or a value to encode as JSON. headers are
// name, value pairs. A transport error fails the test, so call it from the test's goroutine only;
// other goroutines use try.
func (c *apiClient) do(t testing.TB, method, path, key string, body any, headers ...string) resp {
	t.Helper()
	r, err := c.try(method, path, key, body, headers...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// try is do that returns its error instead of failing the test.
func (c *apiClient) try(method, path, key string, body any, headers ...string) (resp, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return resp{}, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.URL+path, rd)
	if err != nil {
		return resp{}, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return resp{}, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return resp{}, err
	}
	return resp{Status: res.StatusCode, Header: res.Header, Body: raw}, nil
}

// goDo sends a request from another goroutine; the outcome arrives on the channel (a transport
// error as status 0 with the error in the body).
func (c *apiClient) goDo(method, path, key string, body any, headers ...string) <-chan resp {
	out := make(chan resp, 1)
	go func() {
		r, err := c.try(method, path, key, body, headers...)
		if err != nil {
			r = resp{Body: []byte(err.Error())}
		}
		out <- r
	}()
	return out
}

// holdCommitLoop parks the commit loop inside a unit until release (see testkit.HoldCommitLoop).
func (ts *testServer) holdCommitLoop(t testing.TB) (release func()) {
	t.Helper()
	return testkit.HoldCommitLoop(t, func(block func()) error {
		return ts.db.Update(context.Background(), func(*engine.Tx) error {
			block()
			return nil
		})
	})
}

// receive waits for one response of goDo with a deadline; a transport error fails the test.
func receive(t testing.TB, what string, ch <-chan resp) resp {
	t.Helper()
	r := testkit.Recv(t, what, ch)
	if r.Status == 0 {
		t.Fatalf("%s: %s", what, r.Body)
	}
	return r
}

// mustStatus fails the test unless r has the wanted status.
func mustStatus(t testing.TB, r resp, want int) resp {
	t.Helper()
	if r.Status != want {
		t.Fatalf("status %d, want %d: %s", r.Status, want, r.Body)
	}
	return r
}

// newConversation opens a conversation in status through the team API and returns its id and
// visitor token.
func (c *apiClient) newConversation(t testing.TB, apiKey string, status engine.Status) (string, string) {
	t.Helper()
	var out engine.CreatedConversation
	mustStatus(t, c.do(t, "POST", "/conversations", apiKey, map[string]any{"status": string(status)}), 201).Decode(t, &out)
	return out.Conversation.ID, out.VisitorToken
}

// conversationIn creates a conversation and moves it to any status through the shortest path of
// allowed PATCHes (engine.PathTo).
func (c *apiClient) conversationIn(t testing.TB, apiKey string, status engine.Status) string {
	t.Helper()
	create, path, ok := engine.PathTo(status)
	if !ok {
		t.Fatalf("no path to status %s", status)
	}
	id, _ := c.newConversation(t, apiKey, create)
	for _, s := range path {
		mustStatus(t, c.do(t, "PATCH", "/conversations/"+id, apiKey, map[string]any{"status": string(s)}), 200)
	}
	return id
}

// pages follows next_cursor from first through every page, decoding each page's data into T.
func pages[T any](t testing.TB, c *apiClient, apiKey, first string) []T {
	t.Helper()
	var all []T
	seen := map[string]bool{}
	path := first
	for {
		var page struct {
			Data       []T     `json:"data"`
			NextCursor *string `json:"next_cursor"`
		}
		mustStatus(t, c.do(t, "GET", path, apiKey, nil), 200).Decode(t, &page)
		all = append(all, page.Data...)
		if page.NextCursor == nil {
			return all
		}
		if seen[*page.NextCursor] {
			t.Fatalf("%s: next_cursor %q came back twice: paging would never end", first, *page.NextCursor)
		}
		seen[*page.NextCursor] = true
		sep := "?"
		if strings.Contains(first, "?") {
			sep = "&"
		}
		path = first + sep + "cursor=" + url.QueryEscape(*page.NextCursor)
	}
}

// messages lists a conversation's whole thread through the team API, every page.
func (c *apiClient) messages(t testing.TB, apiKey, convID string) []engine.Message {
	t.Helper()
	return pages[engine.Message](t, c, apiKey, "/conversations/"+convID+"/messages?limit=100")
}

// events lists the org's whole event log through the API, every page.
func (c *apiClient) events(t testing.TB, apiKey string) []engine.Event {
	t.Helper()
	return pages[engine.Event](t, c, apiKey, "/events?limit=100")
}
