package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/awardee/awardee/engine"
)

func TestWidgetCreatesConversationInInitialStatus(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	for _, initial := range []engine.Status{"", engine.StatusBotActive, engine.StatusAgentRequested, engine.StatusOpen} {
		name := string(initial)
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			org, err := ts.db.CreateOrg(context.Background(), engine.NewOrg{Name: t.Name(), Rate: 1e6, Burst: 1e6, InitialStatus: initial})
			if err != nil {
				t.Fatal(err)
			}
			want := initial
			if want == "" {
				want = engine.StatusOpen
			}
			for _, body := range []any{nil, `{"visitor":{"name":" Ann ","email":"ann@example.com"}}`} {
				r := mustStatus(t, ts.do(t, "POST", "/widget/conversations", org.WidgetKey, body), 201)
				if got := r.Header.Get("Access-Control-Allow-Origin"); got != "*" {
					t.Fatalf("Access-Control-Allow-Origin %q", got)
				}
				var out engine.CreatedConversation
				if err := json.Unmarshal(r.Body, &out); err != nil {
					t.Fatal(err)
				}
				c := out.Conversation
				if !engine.ValidID(engine.PrefixConversation, c.ID) || c.Status != want || c.Assignee != nil {
					t.Fatalf("conversation %s", r.Body)
				}
				if !strings.HasPrefix(out.VisitorToken, engine.SecretVisitor) || len(out.VisitorToken) < 20 {
					t.Fatalf("visitor token %q", out.VisitorToken)
				}
				if body != nil && (c.Visitor.Name == nil || *c.Visitor.Name != "Ann" || c.Visitor.Email == nil || *c.Visitor.Email != "ann@example.com") {
					t.Fatalf("visitor %s", r.Body)
				}
				// The team sees it, and the token opens it.
				if got := fetchConversation(t, ts, org.APIKey, c.ID); got.Status != want {
					t.Fatalf("team sees status %s", got.Status)
				}
				mustStatus(t, ts.do(t, "GET", "/widget/conversations/"+c.ID, out.VisitorToken, nil), 200)
			}
		})
	}
}

func TestVisitorTokenSeesOnlyItsConversation(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	other := ts.newOrg(t, 0, 0)
	own, vt := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "POST", "/widget/conversations/"+own+"/messages", vt, `{"text":"hello"}`), 201)
	sibling, siblingVT := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "POST", "/widget/conversations/"+sibling+"/messages", siblingVT, `{"text":"secret"}`), 201)
	foreign := ts.conversationIn(t, other.APIKey, engine.StatusBotActive)

	c := decodeConversation(t, mustStatus(t, ts.do(t, "GET", "/widget/conversations/"+own, vt, nil), 200))
	if c.ID != own || c.Status != engine.StatusOpen {
		t.Fatalf("own conversation %+v", c)
	}
	var page struct {
		Data       []engine.Message `json:"data"`
		NextCursor *string          `json:"next_cursor"`
	}
	if err := json.Unmarshal(mustStatus(t, ts.do(t, "GET", "/widget/conversations/"+own+"/messages", vt, nil), 200).Body, &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 || page.Data[0].Text != "hello" || page.NextCursor != nil {
		t.Fatalf("own messages %+v", page)
	}

	before := captureState(t, ts, org.APIKey, sibling)
	missing := missingConvID()
	for _, target := range []struct{ name, id string }{{"same org", sibling}, {"other org", foreign}, {"missing", missing}} {
		for _, ep := range []struct{ method, suffix, body string }{
			{"GET", "", ""},
			{"GET", "/messages", ""},
			{"POST", "/messages", `{"text":"hi"}`},
			{"POST", "/request-agent", ""},
		} {
			t.Run(target.name+" "+ep.method+ep.suffix, func(t *testing.T) {
				var body any
				if ep.body != "" {
					body = ep.body
				}
				e := mustAPIError(t, ts.do(t, ep.method, "/widget/conversations/"+target.id+ep.suffix, vt, body), 404, engine.CodeNotFound)
				if strings.Contains(e.Message, target.id) {
					t.Fatalf("the 404 names the conversation: %q", e.Message)
				}
			})
		}
	}
	mustBeUnchanged(t, ts, org.APIKey, sibling, before)
	if got := fetchConversation(t, ts, other.APIKey, foreign).Status; got != engine.StatusBotActive {
		t.Fatalf("foreign conversation moved to %s", got)
	}
	// A visitor token is not a team key, even for its own conversation.
	mustAPIError(t, ts.do(t, "GET", "/conversations/"+own, vt, nil), 403, engine.CodeForbidden)
}

func TestVisitorMessageByStatus(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	for _, status := range engine.Statuses {
		t.Run(string(status), func(t *testing.T) {
			t.Parallel()
			org := ts.newOrg(t, 0, 0)
			id, vt := conversationWithToken(t, ts, org.APIKey, status)
			before := captureState(t, ts, org.APIKey, id)
			r := ts.do(t, "POST", "/widget/conversations/"+id+"/messages", vt, `{"text":"  help me  "}`)
			if status == engine.StatusClosed || status == engine.StatusArchived {
				e := mustAPIError(t, r, 400, engine.CodeInvalidState)
				if e.Details["status"] != string(status) {
					t.Fatalf("details %v", e.Details)
				}
				mustBeUnchanged(t, ts, org.APIKey, id, before)
				return
			}
			mustStatus(t, r, 201)
			if r.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Fatal("no CORS header on a widget answer")
			}
			m := decodeMessage(t, r)
			if m.Role != engine.RoleUser || m.Metadata.Source != "widget" || m.Metadata.APIKeyID != "" || m.Text != "help me" || m.ConversationID != id {
				t.Fatalf("visitor message %s", r.Body)
			}
			want := status
			if status == engine.StatusResolved {
				want = engine.StatusOpen
			}
			if got := fetchConversation(t, ts, org.APIKey, id).Status; got != want {
				t.Fatalf("status %s after a visitor message, want %s", got, want)
			}
			if msgs := ts.messages(t, org.APIKey, id)[len(before.Messages):]; len(msgs) != 1 || msgs[0].ID != m.ID {
				t.Fatalf("messages %+v, want only the visitor's", msgs)
			}
			evs := ts.events(t, org.APIKey)[len(before.Events):]
			if status == engine.StatusResolved {
				if len(evs) != 2 {
					t.Fatalf("%d events, want conversation.updated then message.created", len(evs))
				}
				mustStatusChange(t, evs[0], id, engine.StatusResolved, engine.StatusOpen)
				evs = evs[1:]
			}
			if len(evs) != 1 || msgCreated(t, evs[0]).Message.ID != m.ID {
				t.Fatalf("events %+v, want one message.created", evs)
			}
		})
	}
}

func TestVisitorRequestAgent(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	for _, status := range engine.Statuses {
		t.Run(string(status), func(t *testing.T) {
			t.Parallel()
			org := ts.newOrg(t, 0, 0)
			id, vt := conversationWithToken(t, ts, org.APIKey, status)
			before := captureState(t, ts, org.APIKey, id)
			r := ts.do(t, "POST", "/widget/conversations/"+id+"/request-agent", vt, nil)
			switch status {
			case engine.StatusBotActive:
				c := decodeConversation(t, mustStatus(t, r, 200))
				if c.ID != id || c.Status != engine.StatusAgentRequested {
					t.Fatalf("answered %+v, want agent_requested", c)
				}
				evs := ts.events(t, org.APIKey)[len(before.Events):]
				if len(evs) != 1 {
					t.Fatalf("%d events, want 1", len(evs))
				}
				mustStatusChange(t, evs[0], id, engine.StatusBotActive, engine.StatusAgentRequested)
				if got := fetchConversation(t, ts, org.APIKey, id).Status; got != engine.StatusAgentRequested {
					t.Fatalf("stored status %s", got)
				}
				// Asking again is now a no-op.
				mustStatus(t, ts.do(t, "POST", "/widget/conversations/"+id+"/request-agent", vt, nil), 200)
				if n := len(ts.events(t, org.APIKey)); n != len(before.Events)+1 {
					t.Fatalf("a repeated request-agent added events (%d)", n)
				}
			case engine.StatusAgentRequested, engine.StatusOpen:
				if c := decodeConversation(t, mustStatus(t, r, 200)); c.Status != status {
					t.Fatalf("no-op answered status %s", c.Status)
				}
				mustBeUnchanged(t, ts, org.APIKey, id, before)
			default:
				mustAPIError(t, r, 400, engine.CodeInvalidState)
				mustBeUnchanged(t, ts, org.APIKey, id, before)
			}
		})
	}
}

func TestWidgetCORS(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id, _ := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	for _, path := range []string{"/widget/conversations", "/widget/conversations/" + id + "/messages"} {
		t.Run("preflight "+path, func(t *testing.T) {
			r := ts.do(t, "OPTIONS", path, "", nil,
				"Origin", "https://shop.example",
				"Access-Control-Request-Method", "POST",
				"Access-Control-Request-Headers", "authorization, content-type")
			mustStatus(t, r, 204)
			if got := r.Header.Get("Access-Control-Allow-Origin"); got != "*" {
				t.Fatalf("Access-Control-Allow-Origin %q", got)
			}
			methods := r.Header.Get("Access-Control-Allow-Methods")
			headers := strings.ToLower(r.Header.Get("Access-Control-Allow-Headers"))
			if !strings.Contains(methods, "POST") || !strings.Contains(headers, "authorization") || !strings.Contains(headers, "content-type") {
				t.Fatalf("allows methods %q headers %q", methods, headers)
			}
		})
	}
	// Errors on the widget side carry CORS too, or a browser could not read them.
	r := ts.do(t, "POST", "/widget/conversations", "wk_unknown", nil, "Origin", "https://shop.example")
	mustAPIError(t, r, 401, engine.CodeUnauthorized)
	if got := r.Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Fatalf("401 on the widget side without Access-Control-Allow-Origin (%q)", got)
	}
}
