package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
)

// testServer is the real server on a loopback port with its own data directory.
type testServer struct {
	*server
	URL    string
	dir    string
	client *http.Client
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr = ln.Addr().String()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := newServer(cfg, logger, io.Discard)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	ts := &testServer{server: srv, URL: "http://" + cfg.Addr, dir: cfg.Data,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128}}}
	t.Cleanup(func() {
		ts.stop(t)
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
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
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v: %s", err, r.Body)
	}
	return m
}

// ErrorCode is the envelope's error.code ("" when the body is not an error envelope).
func (r resp) ErrorCode() string {
	var env struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	json.Unmarshal(r.Body, &env)
	return env.Error.Code
}

// do sends one request; body may be nil, a string or a value to encode as JSON. headers are
// name, value pairs. A transport error fails the test, so call it from the test's goroutine only;
// other goroutines use try.
func (ts *testServer) do(t testing.TB, method, path, key string, body any, headers ...string) resp {
	t.Helper()
	r, err := ts.try(method, path, key, body, headers...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// try is do that returns its error instead of failing the test.
func (ts *testServer) try(method, path, key string, body any, headers ...string) (resp, error) {
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
	req, err := http.NewRequest(method, ts.URL+path, rd)
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
	res, err := ts.client.Do(req)
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
func (ts *testServer) goDo(method, path, key string, body any, headers ...string) <-chan resp {
	out := make(chan resp, 1)
	go func() {
		r, err := ts.try(method, path, key, body, headers...)
		if err != nil {
			r = resp{Body: []byte(err.Error())}
		}
		out <- r
	}()
	return out
}

// holdCommitLoop parks the commit loop inside a unit until the returned release is called (or
// the test ends, so a failing test cannot hang in Close), letting a test queue units behind it.
func (ts *testServer) holdCommitLoop(t testing.TB) (release func()) {
	t.Helper()
	holding, unblock := make(chan struct{}), make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(unblock) }) }
	t.Cleanup(release)
	go ts.db.Update(context.Background(), func(*engine.Tx) error {
		close(holding)
		<-unblock
		return nil
	})
	select {
	case <-holding:
	case <-time.After(10 * time.Second):
		t.Fatal("the commit loop did not pick up the holding unit")
	}
	return release
}

// receive waits for one response with a deadline.
func receive(t testing.TB, what string, ch <-chan resp) resp {
	t.Helper()
	select {
	case r := <-ch:
		if r.Status == 0 {
			t.Fatalf("%s: %s", what, r.Body)
		}
		return r
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		return resp{}
	}
}

// mustStatus fails the test unless r has the wanted status.
func mustStatus(t testing.TB, r resp, want int) resp {
	t.Helper()
	if r.Status != want {
		t.Fatalf("status %d, want %d: %s", r.Status, want, r.Body)
	}
	return r
}

// createConversation opens a conversation in status through the team API and returns its id and
// visitor token.
func (ts *testServer) createConversation(t testing.TB, apiKey string, status engine.Status) (string, string) {
	t.Helper()
	r := mustStatus(t, ts.do(t, "POST", "/conversations", apiKey, map[string]any{"status": string(status)}), 201)
	var out engine.CreatedConversation
	if err := json.Unmarshal(r.Body, &out); err != nil {
		t.Fatal(err)
	}
	return out.Conversation.ID, out.VisitorToken
}

// conversationIn creates a conversation and moves it to any status through allowed PATCHes.
func (ts *testServer) conversationIn(t testing.TB, apiKey string, status engine.Status) string {
	t.Helper()
	path := map[engine.Status][]engine.Status{
		engine.StatusBotActive:      {engine.StatusBotActive},
		engine.StatusAgentRequested: {engine.StatusAgentRequested},
		engine.StatusOpen:           {engine.StatusOpen},
		engine.StatusResolved:       {engine.StatusOpen, engine.StatusResolved},
		engine.StatusClosed:         {engine.StatusOpen, engine.StatusClosed},
		engine.StatusArchived:       {engine.StatusOpen, engine.StatusClosed, engine.StatusArchived},
	}[status]
	id, _ := ts.createConversation(t, apiKey, path[0])
	for _, s := range path[1:] {
		mustStatus(t, ts.do(t, "PATCH", "/conversations/"+id, apiKey, map[string]any{"status": string(s)}), 200)
	}
	return id
}

// messages lists a conversation's messages through the team API.
func (ts *testServer) messages(t testing.TB, apiKey, convID string) []engine.Message {
	t.Helper()
	r := mustStatus(t, ts.do(t, "GET", "/conversations/"+convID+"/messages?limit=100", apiKey, nil), 200)
	var page struct {
		Data []engine.Message `json:"data"`
	}
	if err := json.Unmarshal(r.Body, &page); err != nil {
		t.Fatal(err)
	}
	return page.Data
}

// events lists the org's event log through the API.
func (ts *testServer) events(t testing.TB, apiKey string) []engine.Event {
	t.Helper()
	r := mustStatus(t, ts.do(t, "GET", "/events?limit=100", apiKey, nil), 200)
	var page struct {
		Data []engine.Event `json:"data"`
	}
	if err := json.Unmarshal(r.Body, &page); err != nil {
		t.Fatal(err)
	}
	return page.Data
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
