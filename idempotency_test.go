package main

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
)

func TestIdempotentReplayIsByteIdenticalAndStoresOnce(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusAgentRequested)
	path := "/conversations/" + id + "/messages"
	first := mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"once"}`, "Idempotency-Key", "retry-1"), 201)
	if first.Header.Get("Idempotent-Replayed") != "" {
		t.Fatal("a first request must not say it was replayed")
	}
	eventsBefore := len(ts.events(t, org.APIKey))
	for range 3 {
		again := mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"once"}`, "Idempotency-Key", "retry-1"), 201)
		if !bytes.Equal(first.Body, again.Body) {
			t.Fatalf("replay differs:\n%s\n%s", first.Body, again.Body)
		}
		if again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatal("replay lacks Idempotent-Replayed: true")
		}
	}
	if msgs := ts.messages(t, org.APIKey, id); len(msgs) != 2 { // the takeover marker and one reply
		t.Fatalf("%d messages after replays, want 2", len(msgs))
	}
	if n := len(ts.events(t, org.APIKey)); n != eventsBefore {
		t.Fatalf("replays appended %d events", n-eventsBefore)
	}
}

func TestIdempotencyAppliesToEveryPostAndPatch(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	convID, token := ts.newConversation(t, org.APIKey, engine.StatusBotActive)
	ana := ts.newMember(t, org.OrgID, "ana@example.com", engine.RoleAgent).Member.ID
	cases := []struct {
		method, path, key, body string
	}{
		{"POST", "/conversations", org.APIKey, `{"status":"open"}`},
		{"PATCH", "/conversations/" + convID, org.APIKey, `{"assignee":"` + ana + `"}`},
		{"POST", "/conversations/" + convID + "/bot-messages", org.APIKey, `{"text":"bot says hi"}`},
		{"POST", "/widget/conversations", org.WidgetKey, `{}`},
		{"POST", "/widget/conversations/" + convID + "/messages", token, `{"text":"visitor says hi"}`},
		{"POST", "/widget/conversations/" + convID + "/request-agent", token, ``},
	}
	for i, c := range cases {
		key := fmt.Sprintf("every-%d", i)
		first := ts.do(t, c.method, c.path, c.key, c.body, "Idempotency-Key", key)
		if first.Status >= 300 {
			t.Fatalf("%s %s: %d %s", c.method, c.path, first.Status, first.Body)
		}
		eventsBefore := len(ts.events(t, org.APIKey))
		again := ts.do(t, c.method, c.path, c.key, c.body, "Idempotency-Key", key)
		if again.Status != first.Status || !bytes.Equal(again.Body, first.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("%s %s: replay %d %s, first %d %s", c.method, c.path, again.Status, again.Body, first.Status, first.Body)
		}
		if n := len(ts.events(t, org.APIKey)); n != eventsBefore {
			t.Fatalf("%s %s: replay appended %d events", c.method, c.path, n-eventsBefore)
		}
	}
}

func TestIdempotencyKeyMismatch(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	other := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"a"}`, "Idempotency-Key", "k"), 201)
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/conversations/" + id + "/messages", `{"text":"b"}`},    // other body
		{"POST", "/conversations/" + id + "/messages", `{"text": "a"}`},   // same JSON, other bytes
		{"POST", "/conversations/" + other + "/messages", `{"text":"a"}`}, // other path
		{"PATCH", "/conversations/" + id, `{"text":"a"}`},                 // other method and path
	} {
		r := mustStatus(t, ts.do(t, c.method, c.path, org.APIKey, c.body, "Idempotency-Key", "k"), 422)
		if r.ErrorCode(t) != engine.CodeIdempotencyMismatch {
			t.Fatalf("%s %s %s: %s", c.method, c.path, c.body, r.Body)
		}
	}
	if n := len(ts.messages(t, org.APIKey, id)) + len(ts.messages(t, org.APIKey, other)); n != 1 {
		t.Fatalf("%d messages, want 1", n)
	}
}

func TestIdempotencyKeyValidation(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	for name, key := range map[string]string{
		"empty":     "",
		"too long":  strings.Repeat("k", 256),
		"non-ascii": "clé",
		"control":   "a\tb",
	} {
		r := mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"x"}`, "Idempotency-Key", key), 400)
		if r.ErrorCode(t) != engine.CodeValidation {
			t.Fatalf("%s: %s", name, r.Body)
		}
	}
	mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"x"}`, "Idempotency-Key", strings.Repeat("k", 255)), 201)
	if n := len(ts.messages(t, org.APIKey, id)); n != 1 {
		t.Fatalf("%d messages, want only the one with a valid key", n)
	}
}

// TestIdempotencyKeyInUse holds the first request inside the commit loop (a unit that waits) so
// the second, with the same key, really overlaps it.
func TestIdempotencyKeyInUse(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	path := "/conversations/" + id + "/messages"

	release := ts.holdCommitLoop(t)
	firstDone := ts.goDo("POST", path, org.APIKey, `{"text":"slow"}`, "Idempotency-Key", "busy")
	testkit.WaitFor(t, "the first request to hold its key", func() bool {
		ts.inflight.mu.Lock()
		defer ts.inflight.mu.Unlock()
		_, held := ts.inflight.keys[org.OrgID+"busy"]
		return held
	})
	second := mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"slow"}`, "Idempotency-Key", "busy"), 409)
	if second.ErrorCode(t) != engine.CodeIdempotencyInUse {
		t.Fatalf("second: %s", second.Body)
	}
	release()
	first := mustStatus(t, receive(t, "the first request", firstDone), 201)
	third := mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"slow"}`, "Idempotency-Key", "busy"), 201)
	if !bytes.Equal(first.Body, third.Body) {
		t.Fatal("the 409 was stored: the retry after the first finished did not replay it")
	}
	if n := len(ts.messages(t, org.APIKey, id)); n != 1 {
		t.Fatalf("%d messages, want 1", n)
	}
}

func TestIdempotencyKeysArePerOrg(t *testing.T) {
	ts := newTestServer(t)
	a, b := ts.newOrg(t, 0, 0), ts.newOrg(t, 0, 0)
	ra := mustStatus(t, ts.do(t, "POST", "/conversations", a.APIKey, `{}`, "Idempotency-Key", "shared"), 201)
	rb := mustStatus(t, ts.do(t, "POST", "/conversations", b.APIKey, `{}`, "Idempotency-Key", "shared"), 201)
	if rb.Header.Get("Idempotent-Replayed") != "" || bytes.Equal(ra.Body, rb.Body) {
		t.Fatal("org B got org A's stored outcome")
	}
}

func TestIdempotencyStores4xxButNot5xx(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusResolved)
	path := "/conversations/" + id + "/messages"
	refused := mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"late"}`, "Idempotency-Key", "4xx"), 400)
	mustStatus(t, ts.do(t, "PATCH", "/conversations/"+id, org.APIKey, `{"status":"open"}`), 200)
	again := mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"late"}`, "Idempotency-Key", "4xx"), 400)
	if !bytes.Equal(refused.Body, again.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("a stored 400 was not replayed: %s", again.Body)
	}

	// A 5xx is never stored: TestDiskFull retries a key whose first attempt met a full disk.
}

func TestIdempotencyKeysExpire(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.IdempotencyTTL = 300 * time.Millisecond
		c.SweepEvery = 50 * time.Millisecond
	})
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	path := "/conversations/" + id + "/messages"
	mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"one"}`, "Idempotency-Key", "ttl"), 201)
	testkit.WaitFor(t, "the sweeper to delete the expired key", func() bool {
		rec, err := ts.db.LookupIdempotency(org.OrgID, "ttl", time.Hour)
		return err == nil && rec == nil
	})
	r := mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"one"}`, "Idempotency-Key", "ttl"), 201)
	if r.Header.Get("Idempotent-Replayed") != "" {
		t.Fatal("an expired key was replayed")
	}
	if n := len(ts.messages(t, org.APIKey, id)); n != 2 {
		t.Fatalf("%d messages, want 2 (the expired key ran afresh)", n)
	}
}

// TestKillNineBetweenRetriesNeverDuplicates kills the server while a keyed post is in flight,
// restarts it and retries the same key: the message exists exactly once, whatever moment the
// kill hit.
func TestKillNineBetweenRetriesNeverDuplicates(t *testing.T) {
	dir := t.TempDir()
	org := createOrgCLI(t, dir)
	p := startProcess(t, dir)
	convID, _ := p.newConversation(t, org.APIKey, engine.StatusOpen)
	const rounds = 6
	for round := range rounds {
		key := fmt.Sprintf("kill-%d", round)
		text := fmt.Sprintf(`{"text":"round %d"}`, round)
		path := "/conversations/" + convID + "/messages"
		inFlight := p.goDo("POST", path, org.APIKey, text, "Idempotency-Key", key)
		// Vary the moment of the kill across rounds: before, during and after the commit.
		deadline := time.Now().Add(time.Duration(round) * 3 * time.Millisecond)
		for time.Now().Before(deadline) {
		}
		p.cmd.Process.Kill()
		<-p.exited
		testkit.Recv(t, "the killed request's outcome", inFlight) // a 201 or a broken connection
		p = startProcess(t, dir)
		var status int
		for range 50 {
			r, err := p.try("POST", path, org.APIKey, text, "Idempotency-Key", key)
			if err != nil {
				t.Fatalf("round %d: retry: %v", round, err)
			}
			if status = r.Status; status != http.StatusConflict {
				break
			}
		}
		if status != 201 {
			t.Fatalf("round %d: retry got %d", round, status)
		}
	}
	msgs := p.messages(t, org.APIKey, convID)
	count := map[string]int{}
	for _, m := range msgs {
		count[m.Text]++
	}
	for round := range rounds {
		if n := count[fmt.Sprintf("round %d", round)]; n != 1 {
			t.Errorf("round %d: %d messages for one key", round, n)
		}
	}
}

// TestIdempotencyScopesOfVisitors: a visitor's keys live in its own conversation's scope, so
// another visitor cannot replay its answers (which would show another visitor's data) and no
// visitor can block or poison the team's keys.
func TestIdempotencyScopesOfVisitors(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	convA, tokenA := ts.newConversation(t, org.APIKey, engine.StatusBotActive)
	_, tokenB := ts.newConversation(t, org.APIKey, engine.StatusBotActive)
	path := "/widget/conversations/" + convA + "/request-agent"
	mustStatus(t, ts.do(t, "POST", path, tokenA, nil, "Idempotency-Key", "R"), 200)
	r := mustStatus(t, ts.do(t, "POST", path, tokenB, nil, "Idempotency-Key", "R"), 404)
	if r.Header.Get("Idempotent-Replayed") != "" {
		t.Fatal("visitor B got visitor A's stored answer")
	}
	// The team's key R is its own: no mismatch with the visitor's, no replay of it.
	team := mustStatus(t, ts.do(t, "PATCH", "/conversations/"+convA, org.APIKey, `{"status":"open"}`, "Idempotency-Key", "R"), 200)
	if team.Header.Get("Idempotent-Replayed") != "" {
		t.Fatal("the team got a visitor's stored answer")
	}
}

// The fingerprint covers the path as the router matched it: a percent-encoded id that routes to
// "not found" must not share a fingerprint with the real conversation's path, or its stored 404
// would be replayed to the real request under the same key.
func TestIdempotencyFingerprintUsesTheMatchedPath(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	if !strings.HasPrefix(id, "conv_0") {
		t.Fatalf("conversation id %s does not start with conv_0", id)
	}
	encoded := "/conversations/conv_%30" + id[len("conv_0"):] + "/messages"
	body := `{"text":"hi"}`
	mustStatus(t, ts.do(t, "POST", encoded, org.APIKey, body, "Idempotency-Key", "encoded"), 404)
	r := ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, body, "Idempotency-Key", "encoded")
	if r.Header.Get("Idempotent-Replayed") != "" || r.Status != 422 || r.ErrorCode(t) != engine.CodeIdempotencyMismatch {
		t.Fatalf("the real path under the key of an encoded one: %d %s (replayed %q), want 422 mismatch", r.Status, r.Body, r.Header.Get("Idempotent-Replayed"))
	}
}

// Answers that can carry a secret (a visitor token, a replay of one) are never cacheable.
func TestSecretsAreNotCacheable(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	for _, r := range []resp{
		mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, `{}`, "Idempotency-Key", "cache"), 201),
		mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, `{}`, "Idempotency-Key", "cache"), 201),
		mustStatus(t, ts.do(t, "POST", "/widget/conversations", org.WidgetKey, `{}`), 201),
	} {
		if !strings.Contains(string(r.Body), `"visitor_token"`) || r.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("an answer with a visitor token has Cache-Control %q: %s", r.Header.Get("Cache-Control"), r.Body)
		}
	}
}
