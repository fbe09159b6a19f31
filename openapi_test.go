package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	valerrors "github.com/pb33f/libopenapi-validator/errors"
	"github.com/pb33f/libopenapi-validator/schema_validation"
	"github.com/pb33f/libopenapi/datamodel/high/base"
)

// outsideRouter lists operations answered by the router's not-found handler, not by a route:
// the tour checks them like the others.
var outsideRouter = map[string]bool{"GET /app": true}

var pathParam = regexp.MustCompile(`\{[^}]*\}`)

// routeShape names a route by method and path with its parameters unnamed, so the router's
// /files/{org}/{file} and /app/{file:*} meet the document's /files/{org_file_id}/{file} and
// /app/{file}.
func routeShape(method, path string) string {
	return strings.ToUpper(method) + " " + pathParam.ReplaceAllString(path, "{}")
}

// documentedOperations is every operation of openapi.json, by routeShape, with its path as
// the document writes it.
func documentedOperations(t *testing.T) map[string]string {
	t.Helper()
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	ops := map[string]string{}
	for path, item := range doc.Paths {
		for method := range item {
			switch method {
			case "get", "put", "post", "delete", "options", "head", "patch", "trace":
				ops[routeShape(method, path)] = path
			}
		}
	}
	return ops
}

// The router and the document list the same operations: a route added without its description,
// or a description left behind by a removed route, fails here.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	ts := newTestServer(t)
	routed := map[string]bool{}
	for method, paths := range ts.router.List() {
		for _, p := range paths {
			routed[routeShape(method, p)] = true
		}
	}
	documented := documentedOperations(t)
	if len(routed) < 40 {
		t.Fatalf("the router lists %d routes: the walk does not see the route table", len(routed))
	}
	for op := range routed {
		if _, ok := documented[op]; !ok {
			t.Errorf("%s is routed but openapi.json does not describe it", op)
		}
	}
	for op := range documented {
		if !routed[op] && !outsideRouter[op] {
			t.Errorf("openapi.json describes %s, which no route serves", op)
		}
	}
}

// mustJSONPointer is the raw JSON at ptr (/a/b/c, no escapes) in openapi.json.
func mustJSONPointer(t *testing.T, ptr string) json.RawMessage {
	t.Helper()
	raw := json.RawMessage(openAPIDocument)
	for _, name := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil || m[name] == nil {
			t.Fatalf("openapi.json has nothing at %s", ptr)
		}
		raw = m[name]
	}
	return raw
}

// newOpenAPIValidator checks openapi.json against the OpenAPI 3.1 schema and returns a validator
// of HTTP exchanges and a lookup of its component schemas.
func newOpenAPIValidator(t *testing.T) (validator.Validator, func(name string) *base.Schema) {
	t.Helper()
	doc, err := libopenapi.NewDocument(openAPIDocument)
	if err != nil {
		t.Fatalf("openapi.json does not parse: %v", err)
	}
	v, errs := validator.NewValidator(doc, config.WithFormatAssertions())
	if len(errs) > 0 {
		t.Fatalf("openapi.json does not build: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		t.Fatalf("openapi.json breaks the OpenAPI 3.1 schema:\n%s", describeViolations(verrs))
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	schema := func(name string) *base.Schema {
		proxy := model.Model.Components.Schemas.GetOrZero(name)
		if proxy == nil {
			t.Fatalf("openapi.json has no schema %s", name)
		}
		return proxy.Schema()
	}
	return v, schema
}

func describeViolations(errs []*valerrors.ValidationError) string {
	var b strings.Builder
	for _, e := range errs {
		fmt.Fprintf(&b, "  - %s: %s", e.Message, e.Reason)
		for _, se := range e.SchemaValidationErrors {
			fmt.Fprintf(&b, "\n      %s at %s (%s)", se.Reason, se.FieldPath, se.KeywordLocation)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// openAPITour sends real requests to a real server and holds every answer to the document.
type openAPITour struct {
	t         *testing.T
	v         validator.Validator
	schema    func(name string) *base.Schema
	base      string
	hc        *http.Client
	templates map[string]string // routeShape → documented path
	covered   map[string]bool
	codes     map[string]bool // error codes answered
}

// exchange is one request and its answer as sent and received.
type exchange struct {
	method, path string
	reqHeader    http.Header
	reqBody      []byte
	resp
}

func (tr *openAPITour) request(method, path string, body []byte, header http.Header) *http.Request {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, tr.base+path, rd)
	if err != nil {
		tr.t.Fatal(err)
	}
	req.Header = header.Clone()
	return req
}

// send makes one request without touching the test, so any goroutine may call it.
func (tr *openAPITour) send(method, path, body string, headers ...string) (exchange, error) {
	h := http.Header{}
	if body != "" {
		h.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		h.Set(headers[i], headers[i+1])
	}
	var raw []byte
	if body != "" {
		raw = []byte(body)
	}
	res, err := tr.hc.Do(tr.request(method, path, raw, h))
	if err != nil {
		return exchange{}, err
	}
	defer res.Body.Close()
	var got []byte
	if res.StatusCode != http.StatusSwitchingProtocols { // a WebSocket's body is the socket
		if got, err = io.ReadAll(res.Body); err != nil {
			return exchange{}, err
		}
	}
	return exchange{method: method, path: path, reqHeader: h, reqBody: raw, resp: resp{Status: res.StatusCode, Header: res.Header, Body: got}}, nil
}

// check holds an exchange to the document: its answer always, and its request too when the
// request is meant to be valid (the tour's refused requests break the document on purpose).
func (tr *openAPITour) check(x exchange, validRequest bool) resp {
	tr.t.Helper()
	shape := routeShape(x.method, strings.SplitN(x.path, "?", 2)[0])
	for op := range tr.templates {
		if shapeMatches(op, shape) {
			tr.covered[op] = true
		}
	}
	if validRequest {
		if ok, errs := tr.v.ValidateHttpRequestSync(tr.request(x.method, x.path, x.reqBody, x.reqHeader)); !ok {
			tr.t.Errorf("%s %s: the request breaks openapi.json:\n%s", x.method, x.path, describeViolations(errs))
		}
	}
	req := tr.request(x.method, x.path, x.reqBody, x.reqHeader)
	res := &http.Response{StatusCode: x.Status, Header: x.Header, Body: io.NopCloser(bytes.NewReader(x.Body)), Request: req}
	if ok, errs := tr.v.ValidateHttpResponse(req, res); !ok {
		tr.t.Errorf("%s %s: the answer %d breaks openapi.json:\n%s\nbody: %.600s", x.method, x.path, x.Status, describeViolations(errs), x.Body)
	}
	return x.resp
}

// shapeMatches reports whether a concrete request shape ("GET /conversations/conv_…") is an
// instance of a documented one ("GET /conversations/{}").
func shapeMatches(documented, concrete string) bool {
	d, c := strings.Split(documented, "/"), strings.Split(concrete, "/")
	if len(d) != len(c) {
		return false
	}
	for i := range d {
		if d[i] != c[i] && !(d[i] == "{}" && c[i] != "") {
			return false
		}
	}
	return true
}

// conforms holds what no operation describes (a WebSocket frame, a webhook's body, an answer
// the router gives before any route) to one of the document's schemas.
func (tr *openAPITour) conforms(schemaName, what string, body []byte) {
	tr.t.Helper()
	if ok, errs := schema_validation.NewSchemaValidator().ValidateSchemaBytes(tr.schema(schemaName), body); !ok {
		tr.t.Errorf("%s breaks openapi.json's %s:\n%s\nbody: %.600s", what, schemaName, describeViolations(errs), body)
	}
}

// unrouted checks an answer given before any operation: the router's 404 and 405 and the
// transport's refusals, which the document describes in its info and its Error schema.
func (tr *openAPITour) unrouted(want int, code, method, path string, headers ...string) resp {
	tr.t.Helper()
	x, err := tr.send(method, path, "", headers...)
	if err != nil {
		tr.t.Fatalf("%s %.80s: %v", method, path, err)
	}
	if x.Status != want || x.ErrorCode(tr.t) != code {
		tr.t.Fatalf("%s %.80s: got %d %s, want %d %s", method, path, x.Status, x.Body, want, code)
	}
	tr.codes[code] = true
	tr.conforms("Error", fmt.Sprintf("the %d answer to %s %.80s", want, method, path), x.Body)
	if !regexp.MustCompile(`^req_[0-9A-HJKMNP-TV-Z]{26}$`).MatchString(x.Header.Get("X-Request-Id")) {
		tr.t.Errorf("the %d answer to %s %.80s has X-Request-Id %q", want, method, path, x.Header.Get("X-Request-Id"))
	}
	return x.resp
}

// ok sends a valid request, checks both sides and that it got status want.
func (tr *openAPITour) ok(want int, method, path, body string, headers ...string) resp {
	tr.t.Helper()
	x, err := tr.send(method, path, body, headers...)
	if err != nil {
		tr.t.Fatalf("%s %s: %v", method, path, err)
	}
	r := tr.check(x, true)
	if r.Status != want {
		tr.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.Status, want, r.Body)
	}
	return r
}

// refused sends a request that must be answered with status want and the error code.
func (tr *openAPITour) refused(want int, code, method, path, body string, headers ...string) resp {
	tr.t.Helper()
	x, err := tr.send(method, path, body, headers...)
	if err != nil {
		tr.t.Fatalf("%s %s: %v", method, path, err)
	}
	r := tr.check(x, false)
	if r.Status != want || (code != "" && r.ErrorCode(tr.t) != code) {
		tr.t.Fatalf("%s %s: got %d %s, want %d %s", method, path, r.Status, r.Body, want, code)
	}
	tr.codes[code] = true
	return r
}

func bearer(key string) []string { return []string{"Authorization", "Bearer " + key} }

func field[T any](t *testing.T, r resp, name string) T {
	t.Helper()
	v, ok := r.JSON(t)[name].(T)
	if !ok {
		t.Fatalf("%s is not a %T in %s", name, v, r.Body)
	}
	return v
}

// A broad tour of the API, success and error answers, each held to openapi.json: statuses,
// described headers and bodies. It fails when the server sends what the document does not say
// (or the document says what the server does not send), and when an operation goes untoured.
func TestOpenAPIMatchesRealAnswers(t *testing.T) {
	images := newImageServer(t)
	rcv := newReceiver(t)
	var receiverMu sync.Mutex
	receiverDown := true
	rcv.fail = func(int) bool { receiverMu.Lock(); defer receiverMu.Unlock(); return receiverDown }
	ts := newTestServer(t, allowPrivate, func(c *Config) { c.WebhookRetrySchedule = "10ms" })
	v, schema := newOpenAPIValidator(t)
	// Redirects are answers to check, not to follow.
	noRedirects := &http.Client{Transport: ts.hc.Transport, Timeout: ts.hc.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	tr := &openAPITour{t: t, v: v, schema: schema, base: ts.URL, hc: noRedirects, covered: map[string]bool{}, codes: map[string]bool{}}
	tr.templates = documentedOperations(t)
	org := ts.newOrg(t, 0, 0)
	team := bearer(org.APIKey)

	// Conversations and messages.
	created := tr.ok(201, "POST", "/conversations", `{"status":"agent_requested","visitor":{"name":"Ann","email":"ann@example.com"}}`, team...)
	conv := field[map[string]any](t, created, "conversation")["id"].(string)
	visitor := bearer(field[string](t, created, "visitor_token"))
	tr.ok(201, "POST", "/conversations", "", team...)
	tr.ok(200, "GET", "/conversations?status=agent_requested&limit=1", "", team...)
	tr.ok(200, "GET", "/conversations/"+conv, "", team...)
	tr.ok(201, "POST", "/conversations/"+conv+"/messages", `{"text":"Hi Ann"}`, append(team, "Idempotency-Key", "tour-1")...)
	replay := tr.ok(201, "POST", "/conversations/"+conv+"/messages", `{"text":"Hi Ann"}`, append(team, "Idempotency-Key", "tour-1")...)
	if replay.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("a replay without Idempotent-Replayed: %v", replay.Header)
	}
	tr.refused(422, "idempotency_key_mismatch", "POST", "/conversations/"+conv+"/messages", `{"text":"other"}`, append(team, "Idempotency-Key", "tour-1")...)
	withImage := fmt.Sprintf(`{"text":"a picture","attachments":[{"url":%q}]}`, images.URL+"/a.png")
	msg := tr.ok(201, "POST", "/conversations/"+conv+"/messages", withImage, team...)
	fileURL := field[[]any](t, msg, "attachments")[0].(map[string]any)["file_url"].(string)
	filePath := strings.TrimPrefix(fileURL, ts.URL)
	tr.ok(200, "GET", "/conversations/"+conv+"/messages?after=0&limit=2", "", team...)
	tr.ok(200, "PATCH", "/conversations/"+conv, `{"status":"resolved","assignee":null}`, team...)
	tr.refused(400, "invalid_state", "POST", "/conversations/"+conv+"/messages", `{"text":"late"}`, team...)
	tr.refused(422, "invalid_payload", "POST", "/conversations/"+ts.conversationIn(t, org.APIKey, engine.StatusOpen)+"/messages",
		fmt.Sprintf(`{"attachments":[{"url":%q}]}`, images.URL+"/page.png"), team...)
	tr.refused(400, "validation_error", "GET", "/conversations?limit=0", "", team...)
	tr.refused(400, "validation_error", "POST", "/conversations/"+conv+"/messages", `{"text":7}`, team...)
	tr.refused(404, "not_found", "GET", "/conversations/conv_nope", "", team...)
	tr.refused(401, "unauthorized", "GET", "/conversations", "")
	tr.refused(413, "payload_too_large", "POST", "/conversations", `{"text":"`+strings.Repeat("x", maxBodySize)+`"}`, team...)
	bot := ts.conversationIn(t, org.APIKey, engine.StatusBotActive)
	tr.ok(201, "POST", "/conversations/"+bot+"/bot-messages", `{"text":"I am the bot"}`, team...)
	tr.refused(400, "invalid_state", "POST", "/conversations/"+conv+"/bot-messages", `{"text":"not now"}`, team...)
	tr.ok(200, "GET", "/events?after=0&limit=100", "", team...)
	tr.ok(200, "GET", "/assets", "", team...)
	tr.ok(200, "GET", "/usage", "", team...)

	// A second request with the key of one still running: 409, while the first waits on the
	// commit loop.
	held := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	release := ts.holdCommitLoop(t)
	answers := make(chan exchange, 2)
	for range 2 {
		go func() {
			x, err := tr.send("POST", "/conversations/"+held+"/messages", `{"text":"once"}`, append(team, "Idempotency-Key", "tour-busy")...)
			if err != nil {
				x.resp = resp{Body: []byte(err.Error())}
			}
			answers <- x
		}()
	}
	busy := testkit.Recv(t, "the second keyed request", answers)
	release()
	first := testkit.Recv(t, "the first keyed request", answers)
	if busy.Status != 409 || first.Status != 201 {
		t.Fatalf("concurrent keyed posts answered %d %s and %d %s, want 409 and 201", busy.Status, busy.Body, first.Status, first.Body)
	}
	tr.check(busy, true)
	tr.codes[busy.ErrorCode(t)] = true
	tr.check(first, true)

	// A window of one request: the second is 429 with Retry-After.
	tight := ts.newOrg(t, 0.01, 1)
	tr.ok(200, "GET", "/usage", "", bearer(tight.APIKey)...)
	limited := tr.refused(429, "rate_limit_exceeded", "GET", "/usage", "", bearer(tight.APIKey)...)
	if limited.Header.Get("Retry-After") == "" {
		t.Fatalf("429 without Retry-After: %v", limited.Header)
	}

	// Files.
	tr.ok(200, "GET", filePath, "")
	etag := tr.ok(206, "GET", filePath, "", "Range", "bytes=0-3").Header.Get("ETag")
	tr.ok(304, "GET", filePath, "", "If-None-Match", etag)
	tr.ok(416, "GET", filePath, "", "Range", "bytes=999999-")
	tr.refused(404, "not_found", "GET", "/files/"+org.OrgID+"/"+strings.Repeat("0", 64)+".png", "")

	// Webhooks: one whose receiver is down fails its one retry, then a manual retry succeeds.
	hook := tr.ok(201, "POST", "/webhooks", fmt.Sprintf(`{"url":%q,"events":["message.created"]}`, rcv.srv.URL+"/hook"), team...)
	rcv.setSecret(field[string](t, hook, "secret"))
	hookID := field[string](t, hook, "id")
	tr.refused(422, "invalid_payload", "POST", "/webhooks", `{"url":"ftp://example.com/hook"}`, team...)
	tr.ok(201, "POST", "/conversations/"+held+"/messages", `{"text":"for the hook"}`, team...)
	var failed string
	testkit.WaitFor(t, "the delivery to fail its schedule", func() bool {
		var page struct {
			Data []struct{ ID, Status string } `json:"data"`
		}
		json.Unmarshal(ts.do(t, "GET", "/webhooks/"+hookID+"/deliveries", org.APIKey, nil).Body, &page)
		if len(page.Data) == 1 && page.Data[0].Status == "failed" {
			failed = page.Data[0].ID
		}
		return failed != ""
	})
	tr.ok(200, "GET", "/webhooks", "", team...)
	tr.ok(200, "GET", "/webhooks/"+hookID+"/deliveries?limit=10", "", team...)
	receiverMu.Lock()
	receiverDown = false
	receiverMu.Unlock()
	tr.ok(200, "POST", "/webhooks/"+hookID+"/deliveries/"+failed+"/retry", "", team...)
	tr.refused(400, "invalid_state", "POST", "/webhooks/"+hookID+"/deliveries/"+failed+"/retry", "", team...)
	tr.ok(200, "DELETE", "/webhooks/"+hookID, "", team...)
	tr.refused(404, "not_found", "DELETE", "/webhooks/"+hookID, "", team...)

	// Team management and the dashboard's session.
	added := tr.ok(201, "POST", "/members", `{"email":"agent@example.com","name":"Agent","role":"agent"}`, team...)
	memberID := field[map[string]any](t, added, "member")["id"].(string)
	tr.ok(200, "GET", "/members", "", team...)
	tr.ok(200, "PATCH", "/members/"+memberID, `{"name":"Agent Smith"}`, team...)
	tr.refused(404, "not_found", "PATCH", "/members/mem_nope", `{"name":"x"}`, team...)
	tr.ok(200, "GET", "/keys", "", team...)
	key := tr.ok(201, "POST", "/keys", `{"name":"tour"}`, team...)
	tr.ok(200, "DELETE", "/keys/"+field[string](t, key, "key_id"), "", team...)
	tr.ok(200, "GET", "/org/identity-secret", "", team...)
	secret := field[string](t, tr.ok(200, "POST", "/org/identity-secret", "", team...), "secret")

	signIn := `{"email":"agent@example.com","password":"` + field[string](t, added, "password") + `"}`
	tr.refused(401, "unauthorized", "POST", "/session", `{"email":"agent@example.com","password":"wrong"}`)
	session := tr.ok(200, "POST", "/session", signIn)
	var cookie string
	for _, c := range (&http.Response{Header: session.Header}).Cookies() {
		if c.Name == sessionCookie {
			cookie = sessionCookie + "=" + c.Value
		}
	}
	csrf := field[string](t, session, "csrf_token")
	asAgent := []string{"Cookie", cookie, "X-CSRF-Token", csrf}
	tr.ok(200, "GET", "/session", "", asAgent...)
	tr.ok(200, "POST", "/session/realtime-token", "", asAgent...)
	tr.refused(403, "forbidden", "GET", "/members", "", asAgent...)
	tr.refused(403, "forbidden", "PATCH", "/conversations/"+bot, `{"status":"open"}`, "Cookie", cookie)
	tr.ok(200, "PATCH", "/conversations/"+bot, `{"status":"open"}`, asAgent...)
	tr.refused(403, "forbidden", "GET", "/session", "", team...)
	waiting := ts.conversationIn(t, org.APIKey, engine.StatusAgentRequested)
	reply := tr.ok(201, "POST", "/conversations/"+waiting+"/messages", `{"text":"from the dashboard"}`, asAgent...)
	if field[map[string]any](t, reply, "metadata")["source"] != "dashboard" {
		t.Fatalf("a session's reply is %s", reply.Body)
	}
	other := ts.newMember(t, org.OrgID, "other@example.com", engine.RoleAgent)
	tr.ok(200, "PATCH", "/conversations/"+waiting, `{"assignee":"`+other.Member.ID+`"}`, team...)
	tr.refused(400, "invalid_state", "POST", "/conversations/"+waiting+"/messages", `{"text":"mine now"}`,
		append(asAgent, "Idempotency-Key", "tour-assigned-elsewhere")...)
	tr.ok(200, "POST", "/session/password", `{"current":"`+field[string](t, added, "password")+`","new":"a new long password"}`, asAgent...)
	tr.ok(200, "DELETE", "/session", "", asAgent...)
	tr.refused(401, "unauthorized", "GET", "/session", "", "Cookie", cookie)

	// The visitor side, CORS preflights included.
	widget := bearer(org.WidgetKey)
	for _, p := range []string{"/widget/conversations", "/widget/conversations/" + conv, "/widget/conversations/" + conv + "/messages",
		"/widget/conversations/" + conv + "/request-agent"} {
		tr.ok(204, "OPTIONS", p, "", "Origin", "https://shop.example", "Access-Control-Request-Method", "POST")
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte("user-42"))
	verified := tr.ok(201, "POST", "/widget/conversations", `{"user_id":"user-42","user_hash":"`+hex.EncodeToString(mac.Sum(nil))+`","visitor":{"name":"Bo"}}`, widget...)
	if v := field[map[string]any](t, verified, "conversation")["visitor"].(map[string]any); v["verified"] != true {
		t.Fatalf("a verified visitor is %v", v)
	}
	tr.refused(401, "unauthorized", "POST", "/widget/conversations", `{"user_id":"user-42","user_hash":"00"}`, widget...)
	opened := tr.ok(201, "POST", "/widget/conversations", "", widget...)
	vconv := field[map[string]any](t, opened, "conversation")["id"].(string)
	vtoken := bearer(field[string](t, opened, "visitor_token"))
	tr.ok(201, "POST", "/widget/conversations/"+vconv+"/messages", `{"text":"hello?"}`, vtoken...)
	tr.ok(200, "GET", "/widget/conversations/"+vconv, "", vtoken...)
	tr.ok(200, "GET", "/widget/conversations/"+vconv+"/messages?limit=5", "", vtoken...)
	tr.ok(200, "POST", "/widget/conversations/"+vconv+"/request-agent", "", vtoken...)
	tr.refused(404, "not_found", "GET", "/widget/conversations/"+conv, "", vtoken...)
	tr.refused(400, "invalid_state", "POST", "/widget/conversations/"+conv+"/request-agent", "", visitor...)
	tr.refused(403, "forbidden", "GET", "/conversations", "", widget...)
	tr.refused(401, "unauthorized", "GET", "/widget/conversations/"+vconv, "", bearer("vt_unknown")...)

	// Everything else the server serves.
	tr.ok(200, "GET", "/healthz", "")
	tr.ok(200, "GET", "/metrics", "")
	doc := tr.ok(200, "GET", "/openapi.json", "")
	if !bytes.Equal(doc.Body, openAPIDocument) || !strings.HasPrefix(doc.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /openapi.json answered %s with other bytes than the embedded document", doc.Header.Get("Content-Type"))
	}
	tr.ok(304, "GET", "/openapi.json", "", "If-None-Match", doc.Header.Get("ETag"))
	script := tr.ok(200, "GET", "/widget.js", "")
	tr.ok(304, "GET", "/widget.js", "", "If-None-Match", script.Header.Get("ETag"))
	tr.ok(200, "GET", "/demo?key="+org.WidgetKey, "")
	tr.ok(200, "GET", "/demo.css", "")
	tr.ok(308, "GET", "/app", "")
	tr.ok(200, "GET", "/app/index.html", "")
	tr.ok(200, "GET", "/app/app.js", "")
	tr.refused(404, "not_found", "GET", "/app/no-such-file.js", "")
	tr.refused(400, "validation_error", "GET", "/realtime", "")
	tr.ok(101, "GET", "/realtime", "", "Connection", "Upgrade", "Upgrade", "websocket",
		"Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	_, firstOrg := firstOrgKey(t, ts)
	if backup := tr.ok(200, "GET", "/admin/backup", "", bearer(firstOrg)...); len(backup.Body) == 0 {
		t.Fatal("an empty backup")
	}
	tr.refused(403, "forbidden", "GET", "/admin/backup", "", team...)

	// The takeover and the dashboard's assignment as events, a webhook's bodies and /realtime's
	// frames, held to their schemas.
	tr.ok(200, "GET", "/events?after=0&limit=100", "", team...)
	for _, d := range rcv.deliveries() {
		tr.conforms("WebhookPayload", "a webhook delivery", d.Body)
	}
	frames := map[string]string{"ready": "RealtimeReadyFrame", "new_message": "RealtimeNewMessageFrame",
		"conversation.updated": "RealtimeConversationUpdatedFrame", "error": "RealtimeErrorFrame"}
	live := ts.dialRealtime(t, org.APIKey)
	takeover := ts.conversationIn(t, org.APIKey, engine.StatusAgentRequested)
	tr.ok(201, "POST", "/conversations/"+takeover+"/messages", `{"text":"live"}`, team...)
	refusedLive := ts.dialRealtime(t, "ak_unknown")
	for _, c := range []struct {
		ws   *wsClient
		want []string
	}{{live, []string{"ready", "conversation.updated", "new_message", "new_message"}}, {refusedLive, []string{"error"}}} {
		for _, typ := range c.want {
			f := c.ws.expect(typ)
			raw, _ := json.Marshal(f)
			tr.conforms(frames[typ], "a /realtime "+typ+" frame", raw)
		}
	}
	tr.unrouted(404, "not_found", "GET", "/no-such-route")
	allow := tr.unrouted(405, "method_not_allowed", "PUT", "/conversations", team...).Header.Get("Allow")
	if allow == "" {
		t.Fatal("405 without Allow")
	}
	tr.unrouted(414, "uri_too_long", "GET", "/conversations?pad="+strings.Repeat("x", 9<<10), team...)
	tr.unrouted(431, "headers_too_large", "GET", "/conversations", append(team, "X-Pad", strings.Repeat("x", 17<<10))...)

	guarded := newTestServer(t, func(c *Config) { c.MetricsToken = "metrics-secret" })
	tr.base = guarded.URL
	tr.refused(401, "unauthorized", "GET", "/metrics", "")
	tr.ok(200, "GET", "/metrics", "", bearer("metrics-secret")...)

	for op := range tr.templates {
		if !tr.covered[op] {
			t.Errorf("the tour never checked %s against the document", op)
		}
	}
	// Faults, a full disk and a client silent for 10 s are left to their own tests.
	unreached := []string{engine.CodeInternal, engine.CodeUnavailable, codeRequestTimeout}
	var enum []string
	if err := json.Unmarshal(mustJSONPointer(t, "/components/schemas/ErrorCode/enum"), &enum); err != nil {
		t.Fatal(err)
	}
	for _, code := range enum {
		if !tr.codes[code] && !slices.Contains(unreached, code) {
			t.Errorf("the tour never met error code %s", code)
		}
	}
	for code := range statusOf {
		if !slices.Contains(enum, code) {
			t.Errorf("the server answers error code %s, which openapi.json's ErrorCode does not list", code)
		}
	}
}
