package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/awardee/awardee/engine"
	"github.com/oklog/ulid/v2"
)

// missingConvID is a well-formed conversation id that no org holds.
func missingConvID() string { return engine.PrefixConversation + ulid.Make().String() }

// attachmentsBody is a message body with n attachments at url.
func attachmentsBody(text string, n int, url string) map[string]any {
	atts := make([]map[string]string, n)
	for i := range atts {
		atts[i] = map[string]string{"url": fmt.Sprintf("%s%d.png", url, i)}
	}
	return map[string]any{"text": text, "attachments": atts}
}

// TestMessageBodyValidation: every validation error of the message POST answers 400
// validation_error and stores nothing.
func TestMessageBodyValidation(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	cases := []struct {
		name  string
		body  any
		field string // details.field when the contract names one; "" to skip
	}{
		{"bad JSON", `{"text":"hi"`, ""},
		{"trailing garbage", `{"text":"hi"} x`, ""},
		{"empty body", ``, ""},
		{"JSON array", `["hi"]`, ""},
		{"JSON string", `"hi"`, ""},
		{"JSON null", `null`, ""},
		{"JSON number", `42`, ""},
		{"text a number", `{"text":5}`, "text"},
		{"text an array", `{"text":["hi"]}`, "text"},
		{"text an object", `{"text":{"v":"hi"}}`, "text"},
		{"attachments a string", `{"text":"hi","attachments":"https://example.com/a.png"}`, "attachments"},
		{"attachments an object", `{"text":"hi","attachments":{"url":"https://example.com/a.png"}}`, "attachments"},
		{"attachment without url", `{"text":"hi","attachments":[{}]}`, "attachments[0].url"},
		{"second attachment without url", `{"text":"hi","attachments":[{"url":"https://example.com/a.png"},{"href":"x"}]}`, "attachments[1].url"},
		{"attachment null", `{"text":"hi","attachments":[null]}`, "attachments[0].url"},
		{"attachment url a number", `{"text":"hi","attachments":[{"url":5}]}`, ""},
		{"empty object", `{}`, ""},
		{"empty text", `{"text":""}`, ""},
		{"null text and no attachments", `{"text":null,"attachments":[]}`, ""},
		{"whitespace-only text", map[string]any{"text": " \t\n\r \u00a0\u2003 "}, ""},
		{"32001 code points after trimming", map[string]any{"text": "  " + strings.Repeat("a", 32_001) + "\n"}, "text"},
		{"32001 multi-byte code points", map[string]any{"text": strings.Repeat("é", 32_001)}, "text"},
		{"11 attachments", attachmentsBody("hi", 11, "https://example.com/"), "attachments"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := captureState(t, ts, org.APIKey, id)
			e := mustAPIError(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, tc.body), 400, engine.CodeValidation)
			if tc.field != "" && e.Details["field"] != tc.field {
				t.Fatalf("details %v, want field %q", e.Details, tc.field)
			}
			mustBeUnchanged(t, ts, org.APIKey, id, before)
		})
	}
}

// TestMessageBodyLimitsAccepted: the limits are inclusive and count code points, not bytes.
func TestMessageBodyLimitsAccepted(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	cases := []struct {
		name string
		body any
		want string
	}{
		{"32000 two-byte code points", map[string]any{"text": strings.Repeat("é", 32_000)}, strings.Repeat("é", 32_000)},
		{"32000 four-byte code points with padding", map[string]any{"text": "\n  " + strings.Repeat("😀", 32_000) + " \t"}, strings.Repeat("😀", 32_000)},
		{"32000 escaped surrogate pairs", `{"text":"` + strings.Repeat(`\ud83d\ude00`, 32_000) + `"}`, strings.Repeat("😀", 32_000)},
		{"unknown fields are ignored", `{"text":"hi","extra":{"a":[1,2]},"attachments":null}`, "hi"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := decodeMessage(t, mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, tc.body), 201))
			if m.Text != tc.want {
				t.Fatalf("stored %d code points, want %d", utf8.RuneCountInString(m.Text), utf8.RuneCountInString(tc.want))
			}
			msgs := ts.messages(t, org.APIKey, id)
			if last := msgs[len(msgs)-1]; last.ID != m.ID || last.Text != tc.want {
				t.Fatalf("listed message %s differs from the answer %s", last.ID, m.ID)
			}
		})
	}
}

// TestMessageCheckOrder pins section 6's order: auth, conversation, body, status, attachments.
func TestMessageCheckOrder(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	open := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	resolved := ts.conversationIn(t, org.APIKey, engine.StatusResolved)
	bot := ts.conversationIn(t, org.APIKey, engine.StatusBotActive)
	const badBody = `{"text":`
	cases := []struct {
		name   string
		key    string
		conv   string
		body   any
		status int
		code   string
	}{
		{"no auth beats a missing conversation and a bad body", "", missingConvID(), badBody, 401, engine.CodeUnauthorized},
		{"missing conversation beats a bad body", org.APIKey, missingConvID(), badBody, 404, engine.CodeNotFound},
		{"malformed id beats a bad body", org.APIKey, "conv_nope", badBody, 404, engine.CodeNotFound},
		{"bad body beats a resolved conversation", org.APIKey, resolved, badBody, 400, engine.CodeValidation},
		{"empty message beats a resolved conversation", org.APIKey, resolved, `{"text":"  "}`, 400, engine.CodeValidation},
		{"too many attachments beat bot_active", org.APIKey, bot, attachmentsBody("hi", 11, "ftp://example.com/"), 400, engine.CodeValidation},
		{"valid body on bot_active", org.APIKey, bot, `{"text":"hi"}`, 400, engine.CodeInvalidState},
		{"status beats a bad attachment", org.APIKey, resolved, attachmentsBody("hi", 1, "ftp://example.com/"), 400, engine.CodeInvalidState},
		{"ten attachments pass validation", org.APIKey, open, attachmentsBody("hi", 10, "ftp://example.com/"), 422, engine.CodeInvalidPayload},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var before storedState
			if tc.status != 404 && tc.status != 401 {
				before = captureState(t, ts, org.APIKey, tc.conv)
			}
			mustAPIError(t, ts.do(t, "POST", "/conversations/"+tc.conv+"/messages", tc.key, tc.body), tc.status, tc.code)
			if tc.status != 404 && tc.status != 401 {
				mustBeUnchanged(t, ts, org.APIKey, tc.conv, before)
			}
		})
	}
}

// TestAttachmentSchemeRefused: only http and https are fetched; anything else is 422 with the
// offending URL as given, and nothing is stored even when other attachments or text came along.
func TestAttachmentSchemeRefused(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	for _, raw := range []string{
		"ftp://example.com/a.png",
		"file:///etc/passwd",
		"data:image/png;base64,iVBORw0KGgo=",
		"javascript:alert(1)",
		"gopher://example.com/1",
		"//example.com/a.png",
		"example.com/a.png",
		"",
	} {
		t.Run(raw, func(t *testing.T) {
			before := captureState(t, ts, org.APIKey, id)
			body := map[string]any{"text": "see attached", "attachments": []map[string]string{{"url": raw}}}
			e := mustAPIError(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, body), 422, engine.CodeInvalidPayload)
			if e.Details["reason"] != "scheme" || e.Details["url"] != raw {
				t.Fatalf("details %v, want reason scheme and url %q", e.Details, raw)
			}
			mustBeUnchanged(t, ts, org.APIKey, id, before)
		})
	}
}

// teamEndpoints is every team route, naming conversation id.
func teamEndpoints(id string) []struct{ method, path, body string } {
	return []struct{ method, path, body string }{
		{"POST", "/conversations", `{}`},
		{"GET", "/conversations", ""},
		{"GET", "/conversations/" + id, ""},
		{"PATCH", "/conversations/" + id, `{"status":"resolved"}`},
		{"POST", "/conversations/" + id + "/messages", `{"text":"hi"}`},
		{"GET", "/conversations/" + id + "/messages", ""},
		{"POST", "/conversations/" + id + "/bot-messages", `{"text":"hi"}`},
		{"GET", "/events", ""},
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id, vt := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	credentials := []struct {
		name   string
		header string // the whole Authorization header; "" sends none
		status int
		code   string
	}{
		{"no header", "", 401, engine.CodeUnauthorized},
		{"unknown API key", "Bearer ak_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 401, engine.CodeUnauthorized},
		{"empty bearer", "Bearer ", 401, engine.CodeUnauthorized},
		{"not a bearer", "Basic " + org.APIKey, 401, engine.CodeUnauthorized},
		{"bare key", org.APIKey, 401, engine.CodeUnauthorized},
		{"widget key", "Bearer " + org.WidgetKey, 403, engine.CodeForbidden},
		{"visitor token", "Bearer " + vt, 403, engine.CodeForbidden},
	}
	before := captureState(t, ts, org.APIKey, id)
	for _, ep := range teamEndpoints(id) {
		for _, cr := range credentials {
			t.Run(ep.method+" "+ep.path+" "+cr.name, func(t *testing.T) {
				var body any
				if ep.body != "" {
					body = ep.body
				}
				var headers []string
				if cr.header != "" {
					headers = []string{"Authorization", cr.header}
				}
				mustAPIError(t, ts.do(t, ep.method, ep.path, "", body, headers...), cr.status, cr.code)
			})
		}
	}
	mustBeUnchanged(t, ts, org.APIKey, id, before)

	// And the other way round: team keys do not open the visitor side.
	widgetSide := []struct {
		name, method, path, key string
	}{
		{"API key creating a widget conversation", "POST", "/widget/conversations", org.APIKey},
		{"visitor token creating a widget conversation", "POST", "/widget/conversations", vt},
		{"API key reading as a visitor", "GET", "/widget/conversations/" + id, org.APIKey},
		{"widget key reading as a visitor", "GET", "/widget/conversations/" + id, org.WidgetKey},
		{"API key posting as a visitor", "POST", "/widget/conversations/" + id + "/messages", org.APIKey},
		{"API key requesting an agent", "POST", "/widget/conversations/" + id + "/request-agent", org.APIKey},
	}
	for _, ws := range widgetSide {
		t.Run(ws.name, func(t *testing.T) {
			mustAPIError(t, ts.do(t, ws.method, ws.path, ws.key, `{"text":"hi"}`), 403, engine.CodeForbidden)
		})
	}
	mustBeUnchanged(t, ts, org.APIKey, id, before)
}

// postDeclaring sends a POST whose headers declare a body of length bytes (-1: chunked) and holds
// the body back until the answer arrives. A server that refuses by the declared size answers at
// once; sending the whole body first would race the server's close (see TestBodyTooLarge).
func postDeclaring(t testing.TB, ts *testServer, path, key string, length int64) resp {
	t.Helper()
	pr, pw := io.Pipe()
	defer pw.CloseWithError(errors.New("test done"))
	req, err := http.NewRequest("POST", ts.URL+path, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = length
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := ts.hc.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp{Status: res.StatusCode, Header: res.Header, Body: raw}
}

// rawChunkedPost opens a TCP connection, sends a chunked POST whose first chunk announces size
// bytes, and reads the answer without sending the chunk's data.
func rawChunkedPost(t testing.TB, ts *testServer, path string, size int) resp {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n", path, size)
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp{Status: res.StatusCode, Header: res.Header, Body: raw}
}

// TestBodyTooLarge: over 1 MiB is 413 before auth and before routing; exactly 1 MiB is read.
func TestBodyTooLarge(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	msgs := "/conversations/" + id + "/messages"
	cases := []struct {
		name string
		send func() resp
	}{
		{"2 MiB without auth", func() resp { return postDeclaring(t, ts, msgs, "", 2<<20) }},
		{"2 MiB with a wrong key", func() resp { return postDeclaring(t, ts, msgs, "ak_wrong", 2<<20) }},
		{"2 MiB with an API key", func() resp { return postDeclaring(t, ts, msgs, org.APIKey, 2<<20) }},
		{"2 MiB to an unknown route", func() resp { return postDeclaring(t, ts, "/nowhere", "", 2<<20) }},
		{"1 MiB + 1 byte", func() resp { return postDeclaring(t, ts, msgs, org.APIKey, maxBodySize+1) }},
		{"2 MiB chunk", func() resp { return rawChunkedPost(t, ts, msgs, 2<<20) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.send()
			mustAPIError(t, r, 413, engine.CodePayloadTooLarge)
			if r.Header.Get("X-Request-Id") == "" {
				t.Fatal("413 without X-Request-Id")
			}
		})
	}
	t.Run("exactly 1 MiB is read", func(t *testing.T) {
		prefix, suffix := `{"text":"`, `"}`
		exact := prefix + strings.Repeat("a", maxBodySize-len(prefix)-len(suffix)) + suffix
		// Read and judged on its merits: far over 32,000 characters, so a validation error.
		mustAPIError(t, ts.do(t, "POST", msgs, org.APIKey, exact), 400, engine.CodeValidation)
	})
	if n := len(ts.messages(t, org.APIKey, id)); n != 0 {
		t.Fatalf("%d messages stored", n)
	}
}

func TestUnknownRouteAndMethod(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	cases := []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/nope", 404, engine.CodeNotFound},
		{"GET", "/", 404, engine.CodeNotFound},
		{"POST", "/conversations/" + id + "/messages/extra", 404, engine.CodeNotFound},
		{"GET", "/conversations/", 404, engine.CodeNotFound},
		{"GET", "/Conversations", 404, engine.CodeNotFound},
		{"DELETE", "/conversations/" + id, 405, engine.CodeMethodNotAllowed},
		{"PUT", "/conversations", 405, engine.CodeMethodNotAllowed},
		{"POST", "/healthz", 405, engine.CodeMethodNotAllowed},
		{"PATCH", "/events", 405, engine.CodeMethodNotAllowed},
		{"OPTIONS", "/conversations", 405, engine.CodeMethodNotAllowed},
		{"GET", "/widget/conversations/" + id + "/request-agent", 405, engine.CodeMethodNotAllowed},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r := ts.do(t, tc.method, tc.path, org.APIKey, nil)
			mustAPIError(t, r, tc.status, tc.code)
			if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Fatalf("Content-Type %q", ct)
			}
			if tc.status == 405 && r.Header.Get("Allow") == "" {
				t.Fatal("405 without an Allow header")
			}
		})
	}
}

func TestListLimitValidation(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	for _, base := range []string{"/conversations", "/conversations/" + id + "/messages", "/events"} {
		for _, limit := range []string{"0", "101", "abc", "-1", "", "1.5", "99999999999999999999"} {
			t.Run(base+"?limit="+limit, func(t *testing.T) {
				e := mustAPIError(t, ts.do(t, "GET", base+"?limit="+limit, org.APIKey, nil), 400, engine.CodeValidation)
				if e.Details["field"] != "limit" {
					t.Fatalf("details %v, want field limit", e.Details)
				}
			})
		}
		for _, limit := range []string{"1", "100"} {
			t.Run(base+"?limit="+limit, func(t *testing.T) {
				mustStatus(t, ts.do(t, "GET", base+"?limit="+limit, org.APIKey, nil), 200)
			})
		}
	}
}

func TestListQueryValidation(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	cases := []struct{ path, field string }{
		{"/conversations?status=pending", "status"},
		{"/conversations?status=OPEN", "status"},
		{"/conversations?cursor=not*base64", "cursor"},
		{"/conversations?cursor=AAAA", "cursor"},
		{"/conversations/" + id + "/messages?after=-1", "after"},
		{"/conversations/" + id + "/messages?after=abc", "after"},
		{"/conversations/" + id + "/messages?cursor=x", "cursor"},
		{"/events?after=1.5", "after"},
		{"/events?cursor=-2", "cursor"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			e := mustAPIError(t, ts.do(t, "GET", tc.path, org.APIKey, nil), 400, engine.CodeValidation)
			if e.Details["field"] != tc.field {
				t.Fatalf("details %v, want field %s", e.Details, tc.field)
			}
		})
	}
}

func TestMalformedConversationID(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	own, vt := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	ulidPart := own[len(engine.PrefixConversation):]
	bad := []string{
		"abc",
		"conv_",
		"conv_123",
		"msg_" + ulidPart,                 // right ULID, wrong prefix
		"conv_" + ulidPart + "0",          // one character too long
		"conv_" + ulidPart[:25] + "U",     // U is not in Crockford base32
		"conv_ZZZZZZZZZZZZZZZZZZZZZZZZZZ", // overflows 128 bits
		"conv_%00" + ulidPart[2:],
		missingConvID(), // well-formed but missing
	}
	for _, id := range bad {
		for _, ep := range []struct{ method, path, key, body string }{
			{"GET", "/conversations/" + id, org.APIKey, ""},
			{"PATCH", "/conversations/" + id, org.APIKey, `{"status":"resolved"}`},
			{"POST", "/conversations/" + id + "/messages", org.APIKey, `{"text":"hi"}`},
			{"GET", "/conversations/" + id + "/messages", org.APIKey, ""},
			{"POST", "/conversations/" + id + "/bot-messages", org.APIKey, `{"text":"hi"}`},
			{"GET", "/widget/conversations/" + id, vt, ""},
			{"GET", "/widget/conversations/" + id + "/messages", vt, ""},
		} {
			t.Run(ep.method+" "+ep.path, func(t *testing.T) {
				var body any
				if ep.body != "" {
					body = ep.body
				}
				mustAPIError(t, ts.do(t, ep.method, ep.path, ep.key, body), 404, engine.CodeNotFound)
			})
		}
	}
	if c := fetchConversation(t, ts, org.APIKey, own); c.Status != engine.StatusOpen {
		t.Fatalf("status %s", c.Status)
	}
}

// TestRequestIDOnEveryResponse: successes, errors of every layer, and the unauthenticated
// endpoints all carry a fresh X-Request-Id.
func TestRequestIDOnEveryResponse(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id, vt := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	cases := []struct {
		name, method, path, key string
		body                    any
		status                  int
	}{
		{"201", "POST", "/conversations", org.APIKey, `{}`, 201},
		{"200", "GET", "/conversations/" + id, org.APIKey, nil, 200},
		{"400", "POST", "/conversations/" + id + "/messages", org.APIKey, `{}`, 400},
		{"401", "GET", "/conversations", "", nil, 401},
		{"403", "GET", "/conversations", org.WidgetKey, nil, 403},
		{"404 object", "GET", "/conversations/" + missingConvID(), org.APIKey, nil, 404},
		{"404 route", "GET", "/missing", "", nil, 404},
		{"405", "DELETE", "/conversations", "", nil, 405},
		{"413", "POST", "/conversations", "", nil, 413},
		{"422", "POST", "/conversations/" + id + "/messages", org.APIKey, `{"attachments":[{"url":"ftp://x/y.png"}]}`, 422},
		{"widget 200", "GET", "/widget/conversations/" + id, vt, nil, 200},
		{"widget 404", "GET", "/widget/conversations/" + missingConvID(), vt, nil, 404},
		{"preflight", "OPTIONS", "/widget/conversations", "", nil, 204},
		{"healthz", "GET", "/healthz", "", nil, 200},
		{"metrics", "GET", "/metrics", "", nil, 200},
	}
	seen := map[string]string{}
	for _, tc := range cases {
		var r resp
		if tc.status == 413 {
			r = postDeclaring(t, ts, tc.path, tc.key, 2<<20)
		} else {
			r = ts.do(t, tc.method, tc.path, tc.key, tc.body)
		}
		if r.Status != tc.status {
			t.Errorf("%s: status %d, want %d: %.200s", tc.name, r.Status, tc.status, r.Body)
		}
		rid := r.Header.Get("X-Request-Id")
		if rid == "" {
			t.Errorf("%s: no X-Request-Id", tc.name)
			continue
		}
		if other, dup := seen[rid]; dup {
			t.Errorf("%s and %s share request id %s", tc.name, other, rid)
		}
		seen[rid] = tc.name
	}
}

func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	ts.conversationIn(t, org.APIKey, engine.StatusResolved)
	taken := ts.conversationIn(t, org.APIKey, engine.StatusAgentRequested)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"hi"}`), 201)
	// A takeover moves the conversation from agent_requested to open in the gauge too.
	mustStatus(t, ts.do(t, "POST", "/conversations/"+taken+"/messages", org.APIKey, `{"text":"hi"}`), 201)
	r := mustStatus(t, ts.do(t, "GET", "/metrics", "", nil), 200)
	text := string(r.Body)
	for _, want := range []string{
		"awardee_http_request_duration_seconds_bucket{",
		`awardee_http_request_duration_seconds_count{method="POST",route="/conversations/{id}/messages",status="201"} 2`,
		`awardee_messages_posted_total{source="api"} 2`,
		`awardee_conversations{status="open"} 3`,
		`awardee_conversations{status="agent_requested"} 0`,
		`awardee_conversations{status="resolved"} 1`,
		`awardee_conversations{status="archived"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q", ct)
	}
}
