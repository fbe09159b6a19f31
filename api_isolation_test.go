package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/awardee/awardee/engine"
)

// TestOtherOrgsConversationIsMissing: org B naming org A's conversation gets exactly the answer
// it would get for a conversation that does not exist, and changes nothing of A's.
func TestOtherOrgsConversationIsMissing(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	a := ts.newOrg(t, 0, 0)
	b := ts.newOrg(t, 0, 0)
	open := ts.conversationIn(t, a.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+open+"/messages", a.APIKey, `{"text":"for A only"}`), 201)
	bot := ts.conversationIn(t, a.APIKey, engine.StatusBotActive)
	beforeOpen := captureState(t, ts, a.APIKey, open)
	beforeBot := captureState(t, ts, a.APIKey, bot)

	for _, target := range []string{open, bot} {
		for _, ep := range []struct{ method, suffix, body string }{
			{"GET", "", ""},
			{"PATCH", "", `{"status":"resolved","assignee":"mallory"}`},
			{"PATCH", "", `{"status":"not-a-status"}`},
			{"POST", "/messages", `{"text":"hi"}`},
			{"POST", "/messages", `{"text":`},
			{"GET", "/messages", ""},
			{"GET", "/messages?limit=1&after=0", ""},
			{"POST", "/bot-messages", `{"text":"hi"}`},
		} {
			t.Run(ep.method+ep.suffix+" "+ep.body, func(t *testing.T) {
				var body any
				if ep.body != "" {
					body = ep.body
				}
				foreign := ts.do(t, ep.method, "/conversations/"+target+ep.suffix, b.APIKey, body)
				missing := ts.do(t, ep.method, "/conversations/"+missingConvID()+ep.suffix, b.APIKey, body)
				mustAPIError(t, foreign, 404, engine.CodeNotFound)
				if !bytes.Equal(foreign.Body, missing.Body) || foreign.Status != missing.Status {
					t.Fatalf("another org's conversation answers\n  %d %s\nbut a missing one\n  %d %s", foreign.Status, foreign.Body, missing.Status, missing.Body)
				}
				if foreign.Header.Get("X-Request-Id") == "" || foreign.Header.Get("X-Request-Id") == missing.Header.Get("X-Request-Id") {
					t.Fatal("request ids missing or shared")
				}
			})
		}
	}
	mustBeUnchanged(t, ts, a.APIKey, open, beforeOpen)
	mustBeUnchanged(t, ts, a.APIKey, bot, beforeBot)
}

// TestListsStayInTheirOrg: B's lists and event log never show A's objects, with or without
// filters and across pages.
func TestListsStayInTheirOrg(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	a := ts.newOrg(t, 0, 0)
	b := ts.newOrg(t, 0, 0)
	var aIDs []string
	for _, st := range []engine.Status{engine.StatusOpen, engine.StatusAgentRequested, engine.StatusResolved} {
		id := ts.conversationIn(t, a.APIKey, st)
		aIDs = append(aIDs, id)
	}
	mustStatus(t, ts.do(t, "POST", "/conversations/"+aIDs[1]+"/messages", a.APIKey, `{"text":"takeover in A"}`), 201)
	bOwn := ts.conversationIn(t, b.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+bOwn+"/messages", b.APIKey, `{"text":"in B"}`), 201)

	// Walk B's conversation list page by page, with and without a status filter.
	for _, filter := range []string{"", "&status=open", "&status=resolved", "&status=agent_requested"} {
		var seen []string
		path := "/conversations?limit=1" + filter
		for range 10 {
			r := mustStatus(t, ts.do(t, "GET", path, b.APIKey, nil), 200)
			var page struct {
				Data       []engine.Conversation `json:"data"`
				NextCursor *string               `json:"next_cursor"`
			}
			if err := json.Unmarshal(r.Body, &page); err != nil {
				t.Fatal(err)
			}
			for _, c := range page.Data {
				seen = append(seen, c.ID)
			}
			if page.NextCursor == nil {
				break
			}
			path = "/conversations?limit=1" + filter + "&cursor=" + *page.NextCursor
		}
		want := 0
		if filter == "" || filter == "&status=open" {
			want = 1
		}
		if len(seen) != want || (want == 1 && seen[0] != bOwn) {
			t.Fatalf("B lists %v with filter %q, want only its own conversation", seen, filter)
		}
	}

	// B's event log holds B's events only; A's log is untouched by B's writes.
	r := mustStatus(t, ts.do(t, "GET", "/events?limit=100", b.APIKey, nil), 200)
	for _, id := range aIDs {
		if bytes.Contains(r.Body, []byte(id)) {
			t.Fatalf("B's event log mentions A's conversation %s", id)
		}
	}
	if bytes.Contains(r.Body, []byte("takeover in A")) {
		t.Fatal("B's event log shows A's message")
	}
	evs := ts.events(t, b.APIKey)
	if len(evs) != 1 || evs[0].Offset != 1 || msgCreated(t, evs[0]).Conversation.ID != bOwn {
		t.Fatalf("B's events %+v, want its one message.created at offset 1", evs)
	}
	aEvents := ts.events(t, a.APIKey)
	for i, ev := range aEvents {
		if ev.Offset != uint64(i+1) {
			t.Fatalf("A's offsets have a gap at %d: %d", i, ev.Offset)
		}
		if strings.Contains(string(ev.Data), bOwn) {
			t.Fatal("A's event log mentions B's conversation")
		}
	}

	// A cursor of A's list means nothing to B.
	ra := mustStatus(t, ts.do(t, "GET", "/conversations?limit=1", a.APIKey, nil), 200)
	var aPage struct {
		NextCursor *string `json:"next_cursor"`
	}
	if err := json.Unmarshal(ra.Body, &aPage); err != nil || aPage.NextCursor == nil {
		t.Fatalf("A's first page has no cursor: %s", ra.Body)
	}
	rb := ts.do(t, "GET", "/conversations?limit=1&cursor="+*aPage.NextCursor, b.APIKey, nil)
	if rb.Status == 200 {
		for _, id := range aIDs {
			if bytes.Contains(rb.Body, []byte(id)) {
				t.Fatalf("A's cursor shows A's conversation to B: %s", rb.Body)
			}
		}
	} else {
		mustAPIError(t, rb, 400, engine.CodeValidation)
	}
}

// TestIdempotencyKeysAreScopedToTheOrg: two orgs using the same Idempotency-Key do not see each
// other's outcomes.
func TestIdempotencyKeysAreScopedToTheOrg(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	a := ts.newOrg(t, 0, 0)
	b := ts.newOrg(t, 0, 0)
	aConv := ts.conversationIn(t, a.APIKey, engine.StatusOpen)
	bConv := ts.conversationIn(t, b.APIKey, engine.StatusOpen)
	const key = "shared-key-1"
	ra := mustStatus(t, ts.do(t, "POST", "/conversations/"+aConv+"/messages", a.APIKey, `{"text":"from A"}`, "Idempotency-Key", key), 201)
	// Same key, other org, other path and body: neither a replay of A nor a mismatch.
	rb := mustStatus(t, ts.do(t, "POST", "/conversations/"+bConv+"/messages", b.APIKey, `{"text":"from B"}`, "Idempotency-Key", key), 201)
	if rb.Header.Get("Idempotent-Replayed") != "" || decodeMessage(t, rb).Text != "from B" {
		t.Fatalf("B got %s (replayed %q)", rb.Body, rb.Header.Get("Idempotent-Replayed"))
	}
	// Same key, other org, the very path and body A used: B's own 404, not A's 201.
	r := ts.do(t, "POST", "/conversations/"+aConv+"/messages", b.APIKey, `{"text":"from A"}`, "Idempotency-Key", key+"-x")
	mustAPIError(t, r, 404, engine.CodeNotFound)
	// And with the shared key: B's own record for that key (another fingerprint) decides.
	r = ts.do(t, "POST", "/conversations/"+aConv+"/messages", b.APIKey, `{"text":"from A"}`, "Idempotency-Key", key)
	if bytes.Equal(r.Body, ra.Body) {
		t.Fatalf("B replayed A's outcome: %d %s", r.Status, r.Body)
	}
	mustAPIError(t, r, 422, engine.CodeIdempotencyMismatch)
	if n := len(ts.messages(t, a.APIKey, aConv)); n != 1 {
		t.Fatalf("A has %d messages, want 1", n)
	}
}
