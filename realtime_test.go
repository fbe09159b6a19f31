package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/bench/load"
	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
	"github.com/fasthttp/websocket"
)

// wsClient is a real WebSocket client of the test server's /realtime.
type wsClient struct {
	t  *testing.T
	ws *websocket.Conn
}

func (ts *testServer) dialRealtime(t *testing.T, token string) *wsClient {
	t.Helper()
	ws, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/realtime", nil)
	if err != nil {
		t.Fatalf("dial /realtime: %v", err)
	}
	resp.Body.Close()
	t.Cleanup(func() { ws.Close() })
	if err := ws.WriteJSON(map[string]string{"type": "auth", "token": token}); err != nil {
		t.Fatal(err)
	}
	return &wsClient{t: t, ws: ws}
}

// next reads one frame as a generic object, or returns the error that ended the connection.
func (c *wsClient) next() (map[string]any, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(testkit.Timeout))
	var f map[string]any
	err := c.ws.ReadJSON(&f)
	return f, err
}

func (c *wsClient) expect(typ string) map[string]any {
	c.t.Helper()
	f, err := c.next()
	if err != nil {
		c.t.Fatalf("waiting for %s: %v", typ, err)
	}
	if f["type"] != typ {
		c.t.Fatalf("got frame %v, want %s", f, typ)
	}
	return f
}

// The seed's promise: the team's reply shows in the visitor's window at once, and in every other
// dashboard session, without polling.
func TestRealtimeDeliversTheTakeoverReplyThroughTheServer(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	convID, visitorToken := ts.newConversation(t, org.APIKey, engine.StatusAgentRequested)
	visitor := ts.dialRealtime(t, visitorToken)
	team := ts.dialRealtime(t, org.APIKey)
	visitor.expect("ready")
	team.expect("ready")

	var reply engine.Message
	mustStatus(t, ts.do(t, "POST", "/conversations/"+convID+"/messages", org.APIKey, map[string]any{"text": "On it!"}), 201).Decode(t, &reply)
	for _, c := range []*wsClient{visitor, team} {
		if upd := c.expect("conversation.updated"); upd["conversation"].(map[string]any)["status"] != "open" {
			t.Fatalf("got %v, want the conversation open", upd)
		}
		c.expect("new_message") // the system marker
		got := c.expect("new_message")
		if msg := got["message"].(map[string]any); msg["id"] != reply.ID || got["conversation_id"] != convID {
			t.Fatalf("got %v, want the reply %s", got, reply.ID)
		}
	}

	page := string(mustStatus(t, ts.do(t, "GET", "/metrics", "", nil), 200).Body)
	for _, want := range []string{
		`awardee_realtime_connections{kind="api"} 1`,
		`awardee_realtime_connections{kind="visitor"} 1`,
		`awardee_realtime_slow_consumer_closes_total 0`,
		`awardee_realtime_replayed_events_total 0`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(page, "awardee_realtime_frames_sent_total ") || strings.Contains(page, "awardee_realtime_frames_sent_total 0\n") {
		t.Errorf("/metrics counts no realtime frame sent")
	}
}

// Shutdown closes every WebSocket with 1001 (the HTTP drain does not wait for hijacked
// connections) and then closes the database.
func TestServerCloseSendsGoingAwayToWebSockets(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	team := ts.dialRealtime(t, org.APIKey)
	team.expect("ready")

	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout)
		defer cancel()
		closed <- ts.Close(ctx)
	}()
	_, err := team.next()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("connection ended with %v, want close code 1001", err)
	}
	if err := testkit.Recv(t, "server close", closed); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func TestRealtimeWithoutHandshakeIsAnEnvelopedError(t *testing.T) {
	ts := newTestServer(t)
	r := mustStatus(t, ts.do(t, "GET", "/realtime", "", nil), 400)
	if r.ErrorCode(t) != engine.CodeValidation || r.Header.Get("X-Request-Id") == "" {
		t.Fatalf("got %s %v, want validation_error with a request id", r.Body, r.Header)
	}
	var env map[string]any
	if err := json.Unmarshal(r.Body, &env); err != nil {
		t.Fatal(err)
	}
}

// The bench's realtime and idle modes, bounded small, against the real server: every
// subscriber gets every post's frame, and the idle mode reads an RSS.
func TestLoadGeneratorRealtimeModes(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	cfg := load.DefaultConfig()
	cfg.URL, cfg.APIKey, cfg.Subscribers, cfg.Rate, cfg.Requests = ts.URL, org.APIKey, 5, 200, 20
	rt, err := load.RunRealtime(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rt.OK != 20 || rt.Expected != 100 || rt.Got != 100 || rt.AfterResponse.TotalCount() != 100 {
		t.Fatalf("realtime run: %+v, want 20 posts and 100 frames", rt)
	}
	cfg.Connections, cfg.Settle = 20, time.Millisecond
	idle, err := load.RunIdle(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if idle.Before <= 0 || idle.After <= 0 || idle.Connections != 20 {
		t.Fatalf("idle run: %+v", idle)
	}
	var out strings.Builder
	idle.Report(&out, cfg)
	rt.Report(&out, cfg)
	if !strings.Contains(out.String(), "KiB per connection") || !strings.Contains(out.String(), "201-to-frame ms: p50") {
		t.Fatalf("report:\n%s", out.String())
	}
}
