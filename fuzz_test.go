package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/awardee/awardee/engine"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/valyala/fasthttp"
)

// FuzzDecodeMessageBody: decodeMessageBody either returns a body that section 6 accepts or a
// validation_error; it never panics and never lets an out-of-bounds body through.
func FuzzDecodeMessageBody(f *testing.F) {
	for _, seed := range []string{
		`{"text":"hello"}`,
		`{"text":"  padded \n"}`,
		`{"text":"","attachments":[{"url":"https://example.com/a.png"}]}`,
		`{"attachments":[{"url":"https://example.com/a.png"},{"url":"http://example.com/b.gif"}]}`,
		`{"text":"hi","attachments":null,"unknown":[1,{"x":2}]}`,
		`{"text":"\ud83d\ude00 \u00e9"}`,
		`{"text":"a","attachments":[{},{"url":"x"}]}`,
		`{"text":"a","attachments":[null]}`,
		`{"text":"a","attachments":[{"url":5}]}`,
		`{"text":"a","attachments":"x"}`,
		`{"text":5}`,
		`{"text":null}`,
		`{"text":"   "}`,
		`{"text":"\u2003\u00a0"}`,
		`{}`,
		`[]`,
		`null`,
		`"text"`,
		`  {"text":"ok"}  `,
		`{"text":"ok"} {"text":"again"}`,
		`{"text":"unterminated`,
		`{"text":"\xff\xfe"}`,
		``,
		`{"attachments":[` + strings.Repeat(`{"url":"u"},`, 10) + `{"url":"u"}]}`,
		`{"attachments":[` + strings.Repeat(`{"url":"u"},`, 9) + `{"url":"u"}]}`,
		// What strict decoding refuses and a lenient one would read some way or other.
		"{\"text\":\"caf\xe9\"}",
		"{\"text\":\"ok\",\"note\":\"\xf0\x9f\x98\"}",
		`{"text":"\ud83d"}`,
		`{"text":"a\ude00b"}`,
		`{"text":"\ude00\ud83d"}`,
		`{"text":"\ud83d\u0041"}`,
		`{"TEXT":"shouted"}`,
		`{"Text":"capitalised"}`,
		`{"text":"a","attachments":[{"URL":"https://example.com/a.png"}]}`,
		`{"text":"one","text":"two"}`,
		`{"text":"a","attachments":[{"url":"u","url":"v"}]}`,
		`{"text":"<b>&amp;</b>","Unknown":1}`,
		`{"text":"\u003c\u2028\u0000"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		text, urls, err := decodeMessageBody(raw)
		if err != nil {
			var e *engine.Error
			if !errors.As(err, &e) || e.Code != engine.CodeValidation || e.Message == "" {
				t.Fatalf("error %#v is not a validation_error", err)
			}
			if status, _ := renderError(err, slog.New(slog.DiscardHandler), ""); status != 400 {
				t.Fatalf("a decode error renders as %d", status)
			}
			return
		}
		if text != strings.TrimSpace(text) {
			t.Fatalf("text %q is not trimmed", text)
		}
		if text == "" && len(urls) == 0 {
			t.Fatal("accepted a body with neither text nor attachments")
		}
		if n := utf8.RuneCountInString(text); n > engine.MaxTextLength {
			t.Fatalf("accepted %d code points", n)
		}
		if len(urls) > engine.MaxAttachments {
			t.Fatalf("accepted %d attachments", len(urls))
		}
		// Accepted bytes are JSON by the strictest reading: valid UTF-8, no lone surrogate, no
		// name twice.
		if !utf8.Valid(raw) || !jsontext.Value(bytes.TrimSpace(raw)).IsValid() {
			t.Fatalf("accepted a body that strict JSON refuses: %q", raw)
		}
		// The decoder agrees with itself: the accepted body, encoded again, decodes to the same.
		var decoded messageBody
		if err := jsonv2.Unmarshal(bytes.TrimSpace(raw), &decoded); err != nil {
			t.Fatalf("accepted a body json/v2 refuses: %v", err)
		}
		again, err := jsonv2.Marshal(decoded)
		if err != nil {
			t.Fatal(err)
		}
		text2, urls2, err := decodeMessageBody(again)
		if err != nil || text2 != text || !slices.Equal(urls2, urls) {
			t.Fatalf("re-encoded as %s, decoded to %q %q (%v), first %q %q", again, text2, urls2, err, text, urls)
		}
		// And with encoding/json, the other reader a client may use, on the same bytes.
		var body struct {
			Text        *string           `json:"text"`
			Attachments []json.RawMessage `json:"attachments"`
		}
		if err := json.Unmarshal(bytes.TrimSpace(raw), &body); err != nil {
			t.Fatalf("accepted a body encoding/json refuses: %v", err)
		}
		if len(body.Attachments) != len(urls) {
			t.Fatalf("%d attachments in the body, %d urls returned", len(body.Attachments), len(urls))
		}
		if body.Text != nil && strings.TrimSpace(*body.Text) != text {
			t.Fatalf("text %q, body says %q", text, *body.Text)
		}
	})
}

// FuzzRouter drives the real handler in process with fuzzed method, path, body and credential:
// it never panics, never answers 5xx, always sets X-Request-Id, and always answers either the
// error envelope (with the code that matches the status) or a success shape.
func FuzzRouter(f *testing.F) {
	ts := newTestServer(f)
	org := ts.newOrg(f, 0, 0)
	conv, vt := ts.newConversation(f, org.APIKey, engine.StatusBotActive)
	handler := ts.http.Handler
	const (
		authNone = iota
		authAPI
		authWidget
		authVisitor
		authGarbage
		authKinds
	)
	seeds := []struct {
		method, path, body string
		auth               uint8
	}{
		{"GET", "/healthz", "", authNone},
		{"GET", "/metrics", "", authNone},
		{"GET", "/conversations", "", authAPI},
		{"GET", "/conversations?status=open&limit=2", "", authAPI},
		{"GET", "/conversations?cursor=%%%", "", authAPI},
		{"GET", "/conversations?cursor=AAAA", "", authAPI},
		{"POST", "/conversations", `{"status":"bot_active","visitor":{"name":"n","email":"a@b"}}`, authAPI},
		{"POST", "/conversations", `{"status":"resolved"}`, authAPI},
		{"GET", "/conversations/{conv}", "", authAPI},
		{"PATCH", "/conversations/{conv}", `{"status":"agent_requested"}`, authAPI},
		{"PATCH", "/conversations/{conv}", `{"assignee":null}`, authAPI},
		{"PATCH", "/conversations/{conv}", `{"status":5}`, authAPI},
		{"POST", "/conversations/{conv}/messages", `{"text":"hi"}`, authAPI},
		{"POST", "/conversations/{conv}/messages", `{"attachments":[{"url":"ftp://x"}]}`, authAPI},
		{"POST", "/conversations/{conv}/bot-messages", `{"text":"beep"}`, authAPI},
		{"GET", "/conversations/{conv}/messages?after=1&limit=100", "", authAPI},
		{"GET", "/conversations/{conv}/messages?cursor=-1", "", authAPI},
		{"GET", "/events?after=18446744073709551615", "", authAPI},
		{"GET", "/events?limit=0", "", authAPI},
		{"POST", "/widget/conversations", "", authWidget},
		{"POST", "/widget/conversations", `{"visitor":{"email":"nope"}}`, authWidget},
		{"GET", "/widget/conversations/{conv}", "", authVisitor},
		{"POST", "/widget/conversations/{conv}/messages", `{"text":"help"}`, authVisitor},
		{"POST", "/widget/conversations/{conv}/request-agent", "", authVisitor},
		{"OPTIONS", "/widget/conversations", "", authNone},
		{"OPTIONS", "/conversations", "", authNone},
		{"DELETE", "/conversations/{conv}", "", authAPI},
		{"GET", "/conversations/{conv}", "", authWidget},
		{"GET", "/conversations/{conv}", "", authGarbage},
		{"GET", "/../conversations//{conv}/./messages", "", authAPI},
		{"GET", "/conversations/%2e%2e/%00", "", authAPI},
		{"BREW", "/", "", authNone},
		{"GET", "", "", authNone},
		{"OPTIONS", "*", "", authNone},
		{"GET", "http://other.example/conversations", "", authAPI},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, []byte(s.body), s.auth)
	}
	f.Fuzz(func(t *testing.T, method, path string, body []byte, auth uint8) {
		if !wireRequestLine(method, path) {
			return // fasthttp's parser answers these itself, before any handler runs
		}
		var req fasthttp.Request
		req.Header.SetMethod(method)
		req.SetRequestURI(strings.ReplaceAll(path, "{conv}", conv))
		req.SetBody(body)
		switch auth % authKinds {
		case authAPI:
			req.Header.Set("Authorization", "Bearer "+org.APIKey)
		case authWidget:
			req.Header.Set("Authorization", "Bearer "+org.WidgetKey)
		case authVisitor:
			req.Header.Set("Authorization", "Bearer "+vt)
		case authGarbage:
			req.Header.Set("Authorization", "Bearer "+path)
		}
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
		handler(&ctx)
		checkRouterAnswer(t, &ctx)
	})
}

// wireRequestLine reports whether method and path could reach a handler over a real connection:
// fasthttp refuses a method that is not an RFC 9110 token, and a request-target with control
// bytes or spaces, while parsing, and answers those through transportError.
func wireRequestLine(method, path string) bool {
	if method == "" || strings.ContainsFunc(path, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return false
	}
	for _, c := range []byte(method) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

func checkRouterAnswer(t *testing.T, ctx *fasthttp.RequestCtx) {
	t.Helper()
	status := ctx.Response.StatusCode()
	body := ctx.Response.Body()
	what := string(ctx.Method()) + " " + string(ctx.RequestURI())
	if len(ctx.Response.Header.Peek("X-Request-Id")) == 0 {
		t.Fatalf("%s: %d without X-Request-Id", what, status)
	}
	if (status < 200 || status > 299) && (status < 400 || status > 499) {
		t.Fatalf("%s: status %d: %s", what, status, body)
	}
	if status == fasthttp.StatusNoContent {
		if len(body) != 0 {
			t.Fatalf("%s: 204 with a body", what)
		}
		return
	}
	if status == 200 && string(ctx.Path()) == "/metrics" {
		if !bytes.HasPrefix(ctx.Response.Header.ContentType(), []byte("text/plain")) {
			t.Fatalf("metrics answered %s", ctx.Response.Header.ContentType())
		}
		return
	}
	if ct := string(ctx.Response.Header.ContentType()); ct != "application/json" {
		t.Fatalf("%s: %d with Content-Type %q", what, status, ct)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		t.Fatalf("%s: %d body is not a JSON object: %s", what, status, body)
	}
	if status >= 400 {
		var env struct {
			Error struct {
				Code    string         `json:"code"`
				Message string         `json:"message"`
				Details map[string]any `json:"details"`
			} `json:"error"`
		}
		if err := json.Unmarshal(body, &env); err != nil || len(obj) != 1 || env.Error.Code == "" || env.Error.Message == "" {
			t.Fatalf("%s: %d is not the error envelope: %s", what, status, body)
		}
		if statusOf[env.Error.Code] != status {
			t.Fatalf("%s: code %s with status %d", what, env.Error.Code, status)
		}
		if status == fasthttp.StatusTooManyRequests {
			if n, err := strconv.Atoi(string(ctx.Response.Header.Peek("Retry-After"))); err != nil || n < 1 {
				t.Fatalf("%s: 429 with Retry-After %q", what, ctx.Response.Header.Peek("Retry-After"))
			}
		}
		return
	}
	if _, isErr := obj["error"]; isErr {
		t.Fatalf("%s: %d with an error body: %s", what, status, body)
	}
	_, hasData := obj["data"]
	_, hasCursor := obj["next_cursor"]
	_, hasConv := obj["conversation"]
	_, hasToken := obj["visitor_token"]
	var id string
	if raw, ok := obj["id"]; ok {
		if err := json.Unmarshal(raw, &id); err != nil {
			t.Fatalf("%s: id is not a string: %s", what, body)
		}
	}
	switch {
	case hasData && hasCursor: // a list page
		var page struct {
			Data       []json.RawMessage `json:"data"`
			NextCursor *string           `json:"next_cursor"`
		}
		if err := json.Unmarshal(body, &page); err != nil || page.Data == nil {
			t.Fatalf("%s: malformed page: %s", what, body)
		}
	case hasConv && hasToken: // a created conversation
	case strings.HasPrefix(id, engine.PrefixConversation) || strings.HasPrefix(id, engine.PrefixMessage):
	case string(ctx.Path()) == "/healthz" && string(obj["status"]) == `"ok"`:
	default:
		t.Fatalf("%s: %d with an unknown shape: %s", what, status, body)
	}
}
