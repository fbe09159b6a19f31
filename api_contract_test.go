package main

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
)

// TestListDefaultsAndPaging: section 3's default limit of 50 and the cursor that follows it, and
// section 5's ?after= for the event log.
func TestListDefaultsAndPaging(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	for i := range 51 {
		mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, fmt.Sprintf(`{"text":"m%d"}`, i)), 201)
	}
	var page struct {
		Data       []engine.Message `json:"data"`
		NextCursor *string          `json:"next_cursor"`
	}
	mustStatus(t, ts.do(t, "GET", "/conversations/"+id+"/messages", org.APIKey, nil), 200).Decode(t, &page)
	if len(page.Data) != 50 || page.NextCursor == nil {
		t.Fatalf("first page: %d items, cursor %v", len(page.Data), page.NextCursor)
	}
	mustStatus(t, ts.do(t, "GET", "/conversations/"+id+"/messages?cursor="+*page.NextCursor, org.APIKey, nil), 200).Decode(t, &page)
	if len(page.Data) != 1 || page.Data[0].Seq != 51 || page.NextCursor != nil {
		t.Fatalf("second page: %d items, cursor %v", len(page.Data), page.NextCursor)
	}

	var events struct {
		Data       []engine.Event `json:"data"`
		NextCursor *string        `json:"next_cursor"`
	}
	mustStatus(t, ts.do(t, "GET", "/events?after=1&limit=2", org.APIKey, nil), 200).Decode(t, &events)
	if len(events.Data) != 2 || events.Data[0].Offset != 2 || events.Data[1].Offset != 3 || events.NextCursor == nil {
		t.Fatalf("events after 1: %+v cursor %v", events.Data, events.NextCursor)
	}
	mustStatus(t, ts.do(t, "GET", "/events?limit=1&cursor="+*events.NextCursor, org.APIKey, nil), 200).Decode(t, &events)
	if len(events.Data) != 1 || events.Data[0].Offset != 4 {
		t.Fatalf("events after the cursor of offset 3: %+v", events.Data)
	}
}

// TestCreateConversationOnlyInOpeningStatuses: POST /conversations takes bot_active,
// agent_requested or open, nothing else, and creates nothing when refused.
func TestCreateConversationOnlyInOpeningStatuses(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	for _, status := range []string{"resolved", "closed", "archived", "nope"} {
		r := mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, map[string]any{"status": status}), 400)
		if r.ErrorCode(t) != engine.CodeValidation || r.JSON(t)["error"].(map[string]any)["details"].(map[string]any)["field"] != "status" {
			t.Fatalf("%s: %s", status, r.Body)
		}
	}
	var page struct {
		Data []engine.Conversation `json:"data"`
	}
	mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 200).Decode(t, &page)
	if len(page.Data) != 0 {
		t.Fatalf("refused creates stored %d conversations", len(page.Data))
	}
}

// TestBotMessagesValidateLikeReplies: bot-messages share section 6's validation and attachment
// rules.
func TestBotMessagesValidateLikeReplies(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusBotActive)
	path := "/conversations/" + id + "/bot-messages"
	if r := mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"   "}`), 400); r.ErrorCode(t) != engine.CodeValidation {
		t.Fatalf("blank text: %s", r.Body)
	}
	r := mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"see","attachments":[{"url":"ftp://example.com/a.png"}]}`), 422)
	if details := r.JSON(t)["error"].(map[string]any)["details"].(map[string]any); details["reason"] != "scheme" || details["url"] != "ftp://example.com/a.png" {
		t.Fatalf("ftp attachment: %s", r.Body)
	}
	if n := len(ts.messages(t, org.APIKey, id)); n != 0 {
		t.Fatalf("refused bot messages stored %d messages", n)
	}
}

// TestIdempotencyStoresEvery4xx: a 404 and a 422 after auth and the rate limit are stored and
// replayed like a 400.
func TestIdempotencyStoresEvery4xx(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	for _, c := range []struct {
		path, body string
		status     int
	}{
		{"/conversations/conv_01M899DNT7KPS2S7A5S3JHKYC7/messages", `{"text":"x"}`, 404},
		{"/conversations/" + id + "/messages", `{"text":"x","attachments":[{"url":"ftp://h/a.png"}]}`, 422},
	} {
		key := "stored-" + strconv.Itoa(c.status)
		first := mustStatus(t, ts.do(t, "POST", c.path, org.APIKey, c.body, "Idempotency-Key", key), c.status)
		again := mustStatus(t, ts.do(t, "POST", c.path, org.APIKey, c.body, "Idempotency-Key", key), c.status)
		if again.Header.Get("Idempotent-Replayed") != "true" || string(again.Body) != string(first.Body) {
			t.Fatalf("%d was not replayed: %s", c.status, again.Body)
		}
	}
}

// TestRateLimitComesBeforeIdempotencyAndLookups: with the window spent, a replayable key and a
// missing conversation both get 429, and the 429 is not stored: once a token is free the same
// key runs for real.
func TestRateLimitComesBeforeIdempotencyAndLookups(t *testing.T) {
	ts := newTestServer(t)
	clock := stopLimiterClock(ts)
	org := ts.newOrg(t, 1, 1)
	r := mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, `{}`, "Idempotency-Key", "k"), 201)
	replay := mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, `{}`, "Idempotency-Key", "k"), 429)
	if replay.Header.Get("Retry-After") == "" || replay.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("a replay inside a spent window: %v %s", replay.Header, replay.Body)
	}
	mustStatus(t, ts.do(t, "POST", "/conversations/conv_01M899DNT7KPS2S7A5S3JHKYC7/messages", org.APIKey, `{"text":"x"}`), 429)
	refused := mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, `{}`, "Idempotency-Key", "fresh"), 429)
	retry, _ := strconv.Atoi(refused.Header.Get("Retry-After"))
	clock.Advance(time.Duration(retry) * time.Second)
	ran := mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, `{}`, "Idempotency-Key", "fresh"), 201)
	if ran.Header.Get("Idempotent-Replayed") != "" || string(ran.Body) == string(r.Body) {
		t.Fatal("the 429 was stored under its key")
	}
}

// TestRateLimitResetAndVisitorBuckets: t= counts the seconds until the bucket is full, and each
// visitor spends its own conversation's bucket, not one shared by the org's visitors.
func TestRateLimitResetAndVisitorBuckets(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 2, 4)
	r := mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 200)
	if _, _, _, remaining, reset := rateHeaders(t, r); remaining != 3 || reset != 1 {
		t.Fatalf("after one request: r=%d t=%d, want 3 and 1", remaining, reset)
	}
	ts.do(t, "GET", "/conversations", org.APIKey, nil)
	ts.do(t, "GET", "/conversations", org.APIKey, nil)
	r = ts.do(t, "GET", "/conversations", org.APIKey, nil)
	if _, _, _, remaining, reset := rateHeaders(t, r); remaining != 0 || reset != 2 {
		t.Fatalf("after four requests: r=%d t=%d, want 0 and 2", remaining, reset)
	}

	wide := ts.newOrg(t, 0, 0)
	convA, tokenA := ts.newConversation(t, wide.APIKey, engine.StatusOpen)
	convB, tokenB := ts.newConversation(t, wide.APIKey, engine.StatusOpen)
	for range visitorBurst {
		ts.do(t, "GET", "/widget/conversations/"+convA, tokenA, nil)
	}
	mustStatus(t, ts.do(t, "GET", "/widget/conversations/"+convA, tokenA, nil), 429)
	b := mustStatus(t, ts.do(t, "GET", "/widget/conversations/"+convB, tokenB, nil), 200)
	if name, _, _, remaining, _ := rateHeaders(t, b); name != "visitor" || remaining != visitorBurst-1 {
		t.Fatalf("visitor B: %q r=%d, want its own full bucket less one", name, remaining)
	}
}

// TestWritesAfterTheDatabaseClosesAre503: once shutdown has closed the commit loop, a write is
// answered 503 unavailable in the envelope, never a hang or a 500.
func TestWritesAfterTheDatabaseClosesAre503(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	ts.db.Close()
	r := ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"late"}`)
	if r.Status != 503 || r.ErrorCode(t) != engine.CodeUnavailable {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
}
