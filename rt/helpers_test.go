package rt

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// waitTimeout bounds every wait of these tests; it is only reached when a test fails.
const waitTimeout = testkit.Timeout

// testHub is a real database in a temporary directory, a hub on it and a real fasthttp server on
// a loopback port serving the hub at /realtime.
type testHub struct {
	db  *engine.DB
	hub *Hub
	url string
}

func newTestHub(t testing.TB, opts Options) *testHub {
	t.Helper()
	db, err := engine.Open(t.TempDir(), engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hub := New(db, opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Idle workers of fasthttp's pool would count against the goroutine baseline for 10 s.
	srv := &fasthttp.Server{Handler: hub.Handler(), KeepHijackedConns: true, MaxIdleWorkerDuration: 50 * time.Millisecond}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		_ = srv.ShutdownWithContext(ctx)
		<-done
		if err := hub.Close(ctx); err != nil {
			t.Errorf("hub close: %v", err)
		}
		if err := db.Close(); err != nil {
			t.Errorf("db close: %v", err)
		}
	})
	return &testHub{db: db, hub: hub, url: "ws://" + ln.Addr().String() + "/realtime"}
}

func (th *testHub) newOrg(t testing.TB) engine.CreatedOrg {
	t.Helper()
	org, err := th.db.CreateOrg(context.Background(), engine.NewOrg{Name: "test org"})
	if err != nil {
		t.Fatal(err)
	}
	return org
}

func (th *testHub) newConv(t testing.TB, orgID string, status engine.Status) engine.CreatedConversation {
	t.Helper()
	c, _, err := th.db.CreateConversation(context.Background(), orgID, engine.NewConversation{Status: status}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (th *testHub) post(t testing.TB, orgID, convID, text string) engine.Message {
	t.Helper()
	m, _, err := th.db.PostMessage(context.Background(), engine.NewMessage{
		OrgID: orgID, ConversationID: convID, Author: engine.AuthorAgent, Text: text,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (th *testHub) latest(t testing.TB, orgID string) uint64 {
	t.Helper()
	_, latest, err := th.db.LogBounds(orgID)
	if err != nil {
		t.Fatal(err)
	}
	return latest
}

// client is a real WebSocket client.
type client struct {
	t  testing.TB
	ws *websocket.Conn
}

func (th *testHub) dial(t testing.TB) *client {
	t.Helper()
	return dialWith(t, websocket.DefaultDialer, th.url)
}

func dialWith(t testing.TB, d *websocket.Dialer, url string) *client {
	t.Helper()
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	resp.Body.Close()
	t.Cleanup(func() { ws.Close() })
	return &client{t: t, ws: ws}
}

// auth sends the auth frame; resume < 0 sends none.
func (c *client) auth(token string, resume int64) {
	c.t.Helper()
	f := map[string]any{"type": "auth", "token": token}
	if resume >= 0 {
		f["resume_after"] = resume
	}
	if err := c.ws.WriteJSON(f); err != nil {
		c.t.Fatalf("auth: %v", err)
	}
}

// frame is any server frame, with the fields the tests look at.
type frame struct {
	Type           string                   `json:"type"`
	Offset         uint64                   `json:"offset"`
	Code           string                   `json:"code"`
	RawMessage     json.RawMessage          `json:"message"` // the message of new_message, the text of error
	Message        *engine.Message          `json:"-"`
	ConversationID string                   `json:"conversation_id"`
	Conversation   *engine.Conversation     `json:"conversation"`
	Changes        map[string]engine.Change `json:"changes"`
	raw            string
}

// read returns the next frame, or the error that ended the connection (a *websocket.CloseError
// for a close frame).
func (c *client) read() (frame, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(waitTimeout))
	_, b, err := c.ws.ReadMessage()
	if err != nil {
		return frame{}, err
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		return frame{}, err
	}
	f.raw = string(b)
	if f.Type == "new_message" {
		if err := json.Unmarshal(f.RawMessage, &f.Message); err != nil {
			return frame{}, err
		}
	}
	return f, nil
}

func (c *client) mustRead() frame {
	c.t.Helper()
	f, err := c.read()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

// expectType reads one frame and checks its type.
func (c *client) expectType(typ string) frame {
	c.t.Helper()
	f := c.mustRead()
	if f.Type != typ {
		c.t.Fatalf("got frame %s, want type %s", f.raw, typ)
	}
	return f
}

// expectClose reads until the connection ends and checks it ended with a close frame of code;
// frames before it are returned.
func (c *client) expectClose(code int) []frame {
	c.t.Helper()
	var got []frame
	for {
		f, err := c.read()
		if err == nil {
			got = append(got, f)
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			c.t.Fatalf("connection ended with %v after %d frames, want close code %d", err, len(got), code)
		}
		if ce.Code != code {
			c.t.Fatalf("close code %d (%q), want %d", ce.Code, ce.Text, code)
		}
		return got
	}
}

func text(n int) string { return strings.Repeat("x", n) }
