package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/fasthttp/websocket"
)

func (ts *testServer) newMember(t testing.TB, orgID, email string, role engine.MemberRole) engine.CreatedMember {
	t.Helper()
	m, err := ts.db.CreateMember(context.Background(), orgID, engine.NewMember{Email: email, Name: "Member " + email, Role: role})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// member is a signed-in dashboard session as a browser holds it: the cookie and the CSRF token.
type member struct {
	cookie *http.Cookie
	csrf   string
	id     string
}

func (ts *testServer) signIn(t testing.TB, email, password string) member {
	t.Helper()
	r := mustStatus(t, ts.do(t, "POST", "/session", "", map[string]string{"email": email, "password": password}), 200)
	var body struct {
		Member    engine.Member `json:"member"`
		CSRFToken string        `json:"csrf_token"`
	}
	r.Decode(t, &body)
	res := http.Response{Header: r.Header}
	for _, c := range res.Cookies() {
		if c.Name == sessionCookie {
			return member{cookie: c, csrf: body.CSRFToken, id: body.Member.ID}
		}
	}
	t.Fatalf("no %s cookie in %v", sessionCookie, r.Header)
	return member{}
}

// as sends a request with the member's cookie and, unless headers say otherwise, its CSRF token.
func (ts *testServer) as(t testing.TB, m member, method, path string, body any, headers ...string) resp {
	t.Helper()
	hs := append([]string{"Cookie", sessionCookie + "=" + m.cookie.Value}, headers...)
	if !slices.Contains(headers, "X-CSRF-Token") {
		hs = append(hs, "X-CSRF-Token", m.csrf)
	}
	return ts.do(t, method, path, "", body, hs...)
}

func TestSessionCookieCSRFAndSignOut(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	ana := ts.newMember(t, org.OrgID, "ana@example.com", engine.RoleAgent)
	m := ts.signIn(t, "Ana@Example.com", ana.Password)
	if !m.cookie.HttpOnly || m.cookie.SameSite != http.SameSiteStrictMode || m.cookie.Path != "/" || m.cookie.Secure {
		t.Fatalf("cookie %+v: want HttpOnly, SameSite=Strict, Path=/, not Secure over http", m.cookie)
	}
	if m.id != ana.Member.ID || m.csrf == "" {
		t.Fatalf("session %+v", m)
	}
	if got := ts.as(t, m, "GET", "/session", nil).JSON(t); got["csrf_token"] != m.csrf {
		t.Fatalf("GET /session %v", got)
	}
	mustStatus(t, ts.as(t, m, "GET", "/conversations", nil), 200)

	refusals := map[string][]string{
		"no token":         {"X-CSRF-Token", ""},
		"wrong token":      {"X-CSRF-Token", m.csrf + "x"},
		"cross-site fetch": {"Sec-Fetch-Site", "cross-site"},
		"same-site fetch":  {"Sec-Fetch-Site", "same-site"},
		"other origin":     {"Origin", "http://evil.example"},
	}
	for name, h := range refusals {
		if r := ts.as(t, m, "POST", "/conversations", `{}`, h...); r.Status != 403 || r.ErrorCode(t) != engine.CodeForbidden {
			t.Fatalf("%s: %d %s, want 403", name, r.Status, r.Body)
		}
	}
	if n := len(ts.events(t, org.APIKey)); n != 0 {
		t.Fatalf("refused requests wrote %d events", n)
	}
	mustStatus(t, ts.as(t, m, "POST", "/conversations", `{}`, "Origin", ts.URL, "Sec-Fetch-Site", "same-origin"), 201)

	// A cookie is only ever a session: an API key in it opens nothing.
	mustStatus(t, ts.do(t, "GET", "/conversations", "", nil, "Cookie", sessionCookie+"="+org.APIKey), 401)

	mustStatus(t, ts.as(t, m, "DELETE", "/session", nil), 200)
	mustStatus(t, ts.as(t, m, "GET", "/session", nil), 401)
	mustStatus(t, ts.as(t, m, "GET", "/conversations", nil), 401)
}

func TestSignInFailuresAreAlikeAndThrottled(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	ana := ts.newMember(t, org.OrgID, "ana@example.com", engine.RoleAgent)
	attempt := func(email, password string) (resp, time.Duration) {
		start := time.Now()
		r := ts.do(t, "POST", "/session", "", map[string]string{"email": email, "password": password})
		return r, time.Since(start)
	}
	var wrongEmail, wrongPassword []time.Duration
	var bodies [][]byte
	for i := range 3 {
		r1, d1 := attempt("nobody"+strconv.Itoa(i)+"@example.com", "whatever password")
		r2, d2 := attempt("ana@example.com", "wrong password "+strconv.Itoa(i))
		for _, r := range []resp{r1, r2} {
			if r.Status != 401 {
				t.Fatalf("failed sign-in: %d %s", r.Status, r.Body)
			}
			env := r.JSON(t)["error"].(map[string]any)
			bodies = append(bodies, []byte(env["message"].(string)))
		}
		wrongEmail, wrongPassword = append(wrongEmail, d1), append(wrongPassword, d2)
	}
	for _, b := range bodies[1:] {
		if !bytes.Equal(b, bodies[0]) {
			t.Fatalf("messages differ: %q and %q", b, bodies[0])
		}
	}
	// Both pay for one argon2id hash: a wrong email is not answered from a lookup alone.
	slices.Sort(wrongEmail)
	slices.Sort(wrongPassword)
	if wrongEmail[1]*3 < wrongPassword[1] {
		t.Fatalf("a wrong email takes %v, a wrong password %v: timing tells them apart", wrongEmail[1], wrongPassword[1])
	}
	t.Logf("median sign-in failure: wrong email %v, wrong password %v", wrongEmail[1], wrongPassword[1])

	// Three failures so far for ana; two more reach the burst, the next is throttled even with
	// the right password, and names when to retry.
	attempt("ANA@example.com", "wrong again")
	attempt("ana@example.com", "and again")
	r, _ := attempt("ana@example.com", ana.Password)
	if r.Status != 429 || r.ErrorCode(t) != engine.CodeRateLimited {
		t.Fatalf("sixth attempt: %d %s, want 429", r.Status, r.Body)
	}
	if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("Retry-After %q", r.Header.Get("Retry-After"))
	}
	// Per client address too: many emails from one address.
	for i := 0; ; i++ {
		r, _ := attempt("guess"+strconv.Itoa(i)+"@example.com", "x")
		if r.Status == 429 {
			break
		}
		if i > signInAddressBurst {
			t.Fatalf("%d failures from one address were never throttled", i)
		}
	}
}

func TestDisabledMemberAndChangedPasswordEndSessions(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	ana := ts.newMember(t, org.OrgID, "ana@example.com", engine.RoleAgent)
	here, there := ts.signIn(t, "ana@example.com", ana.Password), ts.signIn(t, "ana@example.com", ana.Password)
	mustStatus(t, ts.as(t, here, "POST", "/session/password", map[string]string{"current": ana.Password, "new": "another long password"}), 200)
	mustStatus(t, ts.as(t, here, "GET", "/session", nil), 200)
	mustStatus(t, ts.as(t, there, "GET", "/session", nil), 401)

	mustStatus(t, ts.do(t, "PATCH", "/members/"+ana.Member.ID, org.APIKey, `{"disabled":true}`), 200)
	mustStatus(t, ts.as(t, here, "GET", "/conversations", nil), 401)
	mustStatus(t, ts.do(t, "POST", "/session", "", map[string]string{"email": "ana@example.com", "password": "another long password"}), 401)
}

func TestMembersAndKeysAreForAdmins(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	boss := ts.newMember(t, org.OrgID, "boss@example.com", engine.RoleAdmin)
	ana := ts.newMember(t, org.OrgID, "ana@example.com", engine.RoleAgent)
	admin, agent := ts.signIn(t, "boss@example.com", boss.Password), ts.signIn(t, "ana@example.com", ana.Password)
	for _, rq := range []struct{ method, path, body string }{
		{"GET", "/members", ""}, {"POST", "/members", `{"email":"x@example.com","name":"X"}`},
		{"PATCH", "/members/" + boss.Member.ID, `{"disabled":true}`}, {"GET", "/keys", ""},
		{"POST", "/keys", `{"name":"x"}`}, {"DELETE", "/keys/key_01JAAAAAAAAAAAAAAAAAAAAAAA", ""},
	} {
		var body any
		if rq.body != "" {
			body = rq.body
		}
		if r := ts.as(t, agent, rq.method, rq.path, body); r.Status != 403 {
			t.Fatalf("agent %s %s: %d %s, want 403", rq.method, rq.path, r.Status, r.Body)
		}
	}
	var created engine.CreatedMember
	mustStatus(t, ts.as(t, admin, "POST", "/members", `{"email":"Cy@example.com","name":"Cy","role":"agent"}`), 201).Decode(t, &created)
	if created.Password == "" || created.Member.Role != engine.RoleAgent {
		t.Fatalf("created %+v", created)
	}
	mustStatus(t, ts.do(t, "POST", "/members", org.APIKey, `{"email":"cy@EXAMPLE.com","name":"Cy again"}`), 400)
	var list struct{ Data []engine.Member }
	mustStatus(t, ts.do(t, "GET", "/members", org.APIKey, nil), 200).Decode(t, &list)
	if len(list.Data) != 3 {
		t.Fatalf("members %+v", list.Data)
	}
	mustStatus(t, ts.as(t, admin, "POST", "/keys", `{"name":"ci"}`), 201)
	var keys struct{ Data []engine.KeyInfo }
	mustStatus(t, ts.as(t, admin, "GET", "/keys", nil), 200).Decode(t, &keys)
	if len(keys.Data) != 2 || strings.Contains(string(ts.as(t, admin, "GET", "/keys", nil).Body), "ak_") {
		t.Fatalf("keys %+v", keys.Data)
	}
}

func TestRevokedKeyIsRefusedOverHTTPAndWebSocket(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	var k engine.CreatedKey
	mustStatus(t, ts.do(t, "POST", "/keys", org.APIKey, `{"name":"bot"}`), 201).Decode(t, &k)
	mustStatus(t, ts.do(t, "GET", "/conversations", k.APIKey, nil), 200) // cached from here
	ws := ts.dialRealtime(t, k.APIKey)
	ws.expect("ready")
	start := time.Now()
	mustStatus(t, ts.do(t, "DELETE", "/keys/"+k.KeyID, org.APIKey, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/conversations", k.APIKey, nil), 401)
	expectClosedUnauthorized(t, ws, "revocation")
	if d := time.Since(start); d > time.Second {
		t.Fatalf("the WebSocket closed %v after the revocation, want within 1 s", d)
	}
	mustStatus(t, ts.do(t, "DELETE", "/keys/"+k.KeyID, org.APIKey, nil), 404)
}

func TestRealtimeTokenOpensTheOrgOnce(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	ana := ts.newMember(t, org.OrgID, "ana@example.com", engine.RoleAgent)
	m := ts.signIn(t, "ana@example.com", ana.Password)
	mustStatus(t, ts.as(t, m, "POST", "/session/realtime-token", nil, "X-CSRF-Token", ""), 403)
	tok := mustStatus(t, ts.as(t, m, "POST", "/session/realtime-token", nil), 200).JSON(t)
	token, _ := tok["token"].(string)
	if !strings.HasPrefix(token, engine.SecretRealtime) || tok["expires_at"] == nil {
		t.Fatalf("token %v", tok)
	}
	mustStatus(t, ts.do(t, "GET", "/conversations", token, nil), 401) // not a bearer key
	ws := ts.dialRealtime(t, token)
	ws.expect("ready")
	convID, _ := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "PATCH", "/conversations/"+convID, org.APIKey, `{"status":"resolved"}`), 200)
	if f := ws.expect("conversation.updated"); f["conversation"].(map[string]any)["id"] != convID {
		t.Fatalf("frame %v", f)
	}
	again := ts.dialRealtime(t, token)
	if f, _ := again.next(); f["type"] != "error" {
		t.Fatalf("second use: %v, want an error frame", f)
	}
	// Disabling the member closes its open socket.
	mustStatus(t, ts.do(t, "PATCH", "/members/"+ana.Member.ID, org.APIKey, `{"disabled":true}`), 200)
	if _, err := ws.next(); err == nil {
		if _, err = ws.next(); err == nil {
			t.Fatal("a disabled member's WebSocket stayed open")
		}
	}
}

func TestMemberRepliesAssignAndTwoMembersRace(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	ana, bob := ts.newMember(t, org.OrgID, "ana@example.com", engine.RoleAgent), ts.newMember(t, org.OrgID, "bob@example.com", engine.RoleAgent)
	a, b := ts.signIn(t, "ana@example.com", ana.Password), ts.signIn(t, "bob@example.com", bob.Password)
	convID, _ := ts.newConversation(t, org.APIKey, engine.StatusAgentRequested)
	before := len(ts.events(t, org.APIKey))
	var wg sync.WaitGroup
	results := make([]resp, 2)
	for i, m := range []member{a, b} {
		wg.Go(func() {
			results[i], _ = ts.try("POST", "/conversations/"+convID+"/messages", "", `{"text":"mine"}`,
				"Cookie", sessionCookie+"="+m.cookie.Value, "X-CSRF-Token", m.csrf)
		})
	}
	wg.Wait()
	var winner string
	for i, r := range results {
		switch r.Status {
		case 201:
			winner = []member{a, b}[i].id
			var msg engine.Message
			r.Decode(t, &msg)
			if msg.Metadata.Source != "dashboard" || msg.Metadata.MemberID != winner || msg.Metadata.APIKeyID != "" {
				t.Fatalf("metadata %+v", msg.Metadata)
			}
		case 400:
			e := mustAPIError(t, r, 400, engine.CodeInvalidState)
			if e.Details["assignee"] == nil {
				t.Fatalf("details %v", e.Details)
			}
		default:
			t.Fatalf("reply: %d %s", r.Status, r.Body)
		}
	}
	if winner == "" || results[0].Status == results[1].Status {
		t.Fatalf("statuses %d and %d, want one 201 and one 400", results[0].Status, results[1].Status)
	}
	markers := 0
	for _, msg := range ts.messages(t, org.APIKey, convID) {
		if msg.Role == engine.RoleSystem {
			markers++
		}
	}
	evs := ts.events(t, org.APIKey)[before:]
	if markers != 1 || len(evs) != 3 {
		t.Fatalf("%d markers and %d events, want 1 and 3", markers, len(evs))
	}
	d := convUpdate(t, evs[0])
	if d.Changes["assignee"].To != winner || d.Changes["status"].To != "open" || *d.Conversation.Assignee != winner {
		t.Fatalf("changes %+v", d.Changes)
	}
	// The API's rule stays: an API key replies to the assigned conversation, which stays as it is.
	var apiReply engine.Message
	mustStatus(t, ts.do(t, "POST", "/conversations/"+convID+"/messages", org.APIKey, `{"text":"from the API"}`), 201).Decode(t, &apiReply)
	if apiReply.Metadata.Source != "api" {
		t.Fatalf("API reply metadata %+v", apiReply.Metadata)
	}
	// PATCH takes only members of the org.
	mustStatus(t, ts.do(t, "PATCH", "/conversations/"+convID, org.APIKey, `{"assignee":"mem_01JAAAAAAAAAAAAAAAAAAAAAAA"}`), 400)
}

func TestMemberCreateCommandAndFirstServe(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var out bytes.Buffer
	if err := run([]string{"org", "create", "--data", dir, "--name", "acme"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	orgID := strings.Split(strings.Split(out.String(), `"org_id":"`)[1], `"`)[0]
	out.Reset()
	if err := run([]string{"member", "create", "--data", dir, "--org", orgID, "--email", "ana@example.com", "--name", "Ana"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"member_id":"mem_`) || !strings.Contains(out.String(), `"password":"`) {
		t.Fatalf("member create printed %s", out.String())
	}
	if err := run([]string{"member", "create", "--data", dir, "--org", orgID, "--email", "ANA@example.com", "--name", "Ana"}, &out, &out); err == nil {
		t.Fatal("a second member with the same email was created")
	}

	// The first serve on an empty directory prints an admin to sign in with, and the dashboard.
	cfg := defaultConfig()
	cfg.Data, cfg.Addr = t.TempDir(), "127.0.0.1:0"
	var printed bytes.Buffer
	srv, err := newServer(cfg, slog.New(slog.DiscardHandler), &printed)
	if err != nil {
		t.Fatal(err)
	}
	found := regexp.MustCompile(`dashboard: +http://127\.0\.0\.1:0/app/\n +email: +(\S+)\n +password: +(\S+)\n`).FindStringSubmatch(printed.String())
	srv.Close(context.Background())
	if found == nil {
		t.Fatalf("first serve printed:\n%s", printed.String())
	}
	db, err := engine.Open(cfg.Data, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, session, err := db.SignIn(context.Background(), found[1], found[2])
	if err != nil || session.Member.Role != engine.RoleAdmin {
		t.Fatalf("signing in as the printed admin: %+v %v", session, err)
	}
}

// dashboardSocket signs in an agent of org and opens /realtime as the dashboard does, with a
// realtime token its session mints.
func (ts *testServer) dashboardSocket(t *testing.T, org testOrg) (member, *wsClient) {
	t.Helper()
	ana := ts.newMember(t, org.OrgID, "ana@example.com", engine.RoleAgent)
	m := ts.signIn(t, "ana@example.com", ana.Password)
	token := mustStatus(t, ts.as(t, m, "POST", "/session/realtime-token", nil), 200).JSON(t)["token"].(string)
	ws := ts.dialRealtime(t, token)
	ws.expect("ready")
	return m, ws
}

// expectClosedUnauthorized reads ws until it ends (past at most one frame already on its way)
// and requires the close to be 4001, the code of a revoked key or an ended session.
func expectClosedUnauthorized(t *testing.T, ws *wsClient, after string) {
	t.Helper()
	f, err := ws.next()
	if err == nil {
		f, err = ws.next()
	}
	var ce *websocket.CloseError
	if !errorsAs(err, &ce) || ce.Code != 4001 {
		t.Fatalf("after %s: frame %v, err %v, want close 4001", after, f, err)
	}
}

func errorsAs(err error, target **websocket.CloseError) bool {
	ce, ok := err.(*websocket.CloseError)
	if ok {
		*target = ce
	}
	return ok
}

func TestSignOutClosesTheSessionsWebSockets(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	m, ws := ts.dashboardSocket(t, org)
	mustStatus(t, ts.as(t, m, "DELETE", "/session", nil), 200)
	expectClosedUnauthorized(t, ws, "signing out")
}

// A session that ends by going idle takes its WebSockets with it at the next sweep: the socket
// authenticated once, with a token the session minted, and nothing asks it again.
func TestAnIdleSessionsWebSocketsCloseWithIt(t *testing.T) {
	t.Parallel()
	clock := &testClock{now: time.Now()}
	ts := newTestServer(t, func(c *Config) { c.now, c.SweepEvery = clock.Now, 20*time.Millisecond })
	org := ts.newOrg(t, 0, 0)
	m, ws := ts.dashboardSocket(t, org)
	apiWS := ts.dialRealtime(t, org.APIKey)
	apiWS.expect("ready")

	clock.Advance(engine.SessionIdle + time.Minute)
	expectClosedUnauthorized(t, ws, "the session went idle")
	mustStatus(t, ts.as(t, m, "GET", "/session", nil), 401)
	// An API key's socket is no session's: it stays, and still gets the org's events.
	conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey, `{"text":"still here"}`), 201)
	if f := apiWS.expect("new_message"); f["conversation_id"] != conv {
		t.Fatalf("the API key's socket got %v, want the new message of %s", f, conv)
	}
}

// A keyed team-management write (here POST /keys) is replayed, not run twice: a retry gets the
// same key back instead of a second one.
func TestKeyedKeyCreationIsReplayed(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	first := mustStatus(t, ts.do(t, "POST", "/keys", org.APIKey, `{"name":"ci"}`, "Idempotency-Key", "new-key"), 201)
	again := mustStatus(t, ts.do(t, "POST", "/keys", org.APIKey, `{"name":"ci"}`, "Idempotency-Key", "new-key"), 201)
	if again.Header.Get("Idempotent-Replayed") != "true" || string(again.Body) != string(first.Body) {
		t.Fatalf("a keyed POST /keys again: replayed %q, %s", again.Header.Get("Idempotent-Replayed"), again.Body)
	}
}

// Filling the throttle's memory with made-up emails forgets only refilled buckets: the one being
// guessed keeps its spent tokens.
func TestSignInThrottleSurvivesASprayOfEmails(t *testing.T) {
	th := newSignInThrottle()
	victim := th.limiters("victim@example.com", "203.0.113.1")[0]
	victim.AllowN(time.Now(), signInBurst)
	for i := range signInTracked {
		th.limiters(fmt.Sprintf("spray-%d@example.com", i), "203.0.113.1")
	}
	if again := th.limiters("victim@example.com", "203.0.113.1")[0]; again != victim {
		t.Fatal("a spray of emails reset the guessed email's throttle")
	}
}
