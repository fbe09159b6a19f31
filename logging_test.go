package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
)

// logCapture is the server's log stream, written from many goroutines.
type logCapture struct{ lockedBuffer }

func startLoggedServer(t *testing.T, format string, banner *bytes.Buffer, tweak ...func(*Config)) (*testServer, *logCapture) {
	t.Helper()
	cfg := defaultConfig()
	cfg.Data = t.TempDir()
	cfg.ShutdownTimeout = 5 * time.Second
	for _, f := range tweak {
		f(&cfg)
	}
	logs := &logCapture{}
	logger, err := newLogger(logs, format, "debug")
	if err != nil {
		t.Fatal(err)
	}
	ts := startServerWith(t, cfg, logger, banner, "http", newAPIClient("").hc)
	return ts, logs
}

// A full tour at debug level, with every kind of secret the server makes or takes: none of them
// may reach the log. The first start's banner shows the new org's secrets on stdout on purpose;
// they must not be in the log stream either.
func TestDebugLogHoldsNoSecret(t *testing.T) {
	var banner bytes.Buffer
	metricsToken := "metrics-token-" + strings.Repeat("m", 20)
	ts, logs := startLoggedServer(t, "json", &banner, allowPrivate, fastRetries, func(c *Config) { c.MetricsToken = metricsToken })
	secrets := map[string]string{"metrics token": metricsToken}
	fromBanner := func(label string) string {
		m := regexp.MustCompile(label + `:\s+(\S+)`).FindStringSubmatch(banner.String())
		if m == nil {
			t.Fatalf("no %s in the first start's banner:\n%s", label, banner.String())
		}
		secrets["banner "+label] = m[1]
		return m[1]
	}
	apiKey, widgetKey, adminPassword := fromBanner("API key"), fromBanner("widget key"), fromBanner("password")

	// Keys and members.
	var key struct {
		APIKey string `json:"api_key"`
	}
	mustStatus(t, ts.do(t, "POST", "/keys", apiKey, map[string]string{"name": "ci"}), 201).Decode(t, &key)
	secrets["created API key"] = key.APIKey
	var created struct {
		Password string `json:"password"`
	}
	mustStatus(t, ts.do(t, "POST", "/members", apiKey, map[string]string{"email": "agent@example.com", "name": "Agent"}), 201).Decode(t, &created)
	secrets["member password"] = created.Password

	// Sessions: sign-in, a wrong password, a password change, a realtime token.
	wrongPassword := "wrong-password-" + strings.Repeat("w", 12)
	secrets["wrong password"] = wrongPassword
	mustStatus(t, ts.do(t, "POST", "/session", "", map[string]string{"email": "agent@example.com", "password": wrongPassword}), 401)
	admin := ts.signIn(t, bootstrapAdminEmail, adminPassword)
	secrets["session cookie"], secrets["CSRF token"] = admin.cookie.Value, admin.csrf
	newPassword := "new-password-" + strings.Repeat("n", 12)
	secrets["new password"] = newPassword
	mustStatus(t, ts.as(t, admin, "POST", "/session/password", map[string]string{"current": adminPassword, "new": newPassword}), 200)
	agent := ts.signIn(t, "agent@example.com", created.Password)
	secrets["second session cookie"], secrets["second CSRF token"] = agent.cookie.Value, agent.csrf
	var rtt struct {
		Token string `json:"token"`
	}
	mustStatus(t, ts.as(t, agent, "POST", "/session/realtime-token", nil), 200).Decode(t, &rtt)
	secrets["realtime token"] = rtt.Token
	ts.dialRealtime(t, rtt.Token).expect("ready")
	mustStatus(t, ts.do(t, "POST", "/conversations", rtt.Token, map[string]any{}), 401) // spent on the wrong door
	mustStatus(t, ts.as(t, agent, "DELETE", "/session", nil), 200)

	// Conversations from both sides, with a verified visitor.
	convID, visitorToken := ts.newConversation(t, apiKey, engine.StatusAgentRequested)
	secrets["visitor token"] = visitorToken
	identity := identitySecret(t, ts, apiKey)
	secrets["identity secret"] = identity
	userHash := signUser(identity, "u-1")
	secrets["user hash"] = userHash
	widgetConv := openWidget(t, ts, widgetKey, map[string]any{"user_id": "u-1", "user_hash": userHash}, 201)
	secrets["widget visitor token"] = widgetConv.VisitorToken
	mustStatus(t, ts.do(t, "POST", "/widget/conversations/"+widgetConv.Conversation.ID+"/messages", widgetConv.VisitorToken, map[string]string{"text": "hello"}), 201)
	ts.dialRealtime(t, widgetConv.VisitorToken).expect("ready")
	mustStatus(t, ts.do(t, "GET", "/demo?key="+widgetKey, "", nil), 200)

	// A webhook whose URL carries a credential, as many receivers' URLs do, and its deliveries.
	rcv := newReceiver(t)
	hookToken := "hook-url-token-" + strings.Repeat("h", 12)
	secrets["webhook URL token"] = hookToken
	var ep struct {
		Secret string `json:"secret"`
	}
	mustStatus(t, ts.do(t, "POST", "/webhooks", apiKey, map[string]any{"url": rcv.srv.URL + "/hook?token=" + hookToken}), 201).Decode(t, &ep)
	secrets["webhook secret"] = ep.Secret
	rcv.setSecret(ep.Secret)

	// The team's reply (takeover), keyed; then attachments whose URLs carry a signature, one
	// fetched and one whose fetch fails and is logged with its cause.
	post := mustStatus(t, ts.do(t, "POST", "/conversations/"+convID+"/messages", apiKey, map[string]string{"text": "on it"}, "Idempotency-Key", "tour-1"), 201)
	rcv.waitDeliveries(t, 2)
	images := newImageServer(t)
	signature := "X-Amz-Signature=" + strings.Repeat("5", 24)
	secrets["presigned URL signature"] = signature
	mustStatus(t, ts.do(t, "POST", "/conversations/"+convID+"/messages", apiKey,
		map[string]any{"attachments": []map[string]string{{"url": images.URL + "/a.png?" + signature}}}), 201)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + closed.Addr().String() + "/b.png?" + signature
	closed.Close()
	userinfo := "user:" + strings.Repeat("p", 16)
	secrets["URL userinfo"] = userinfo
	for _, u := range []string{deadURL, "http://" + userinfo + "@" + strings.TrimPrefix(deadURL, "http://")} {
		r := ts.do(t, "POST", "/conversations/"+convID+"/messages", apiKey, map[string]any{"text": "see", "attachments": []map[string]string{{"url": u}}})
		if r.Status != 422 && r.Status != 503 {
			t.Fatalf("attachment from a closed port: %d %s", r.Status, r.Body)
		}
	}

	// Secrets that are wrong or misplaced.
	unknownKey := engine.SecretAPI + strings.Repeat("u", 26)
	secrets["unknown API key"] = unknownKey
	mustStatus(t, ts.do(t, "GET", "/conversations", unknownKey, nil), 401)
	mustStatus(t, ts.do(t, "GET", "/metrics", metricsToken, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/admin/backup", apiKey, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/metrics", unknownKey, nil), 401)
	mustStatus(t, ts.do(t, "GET", "/conversations", "", nil, "Cookie", sessionCookie+"="+admin.cookie.Value+"x"), 401)

	// A head fasthttp cannot parse, carrying the session's secrets: its error must not quote it.
	raw, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(raw, "GET /session HTTP/1.1\r\nHost: x\r\nCookie: %s=%s\r\nX-CSRF-Token: %s\r\nContent-Length: nope\r\n\r\n", sessionCookie, admin.cookie.Value, admin.csrf)
	io.Copy(io.Discard, raw) // the server answers and closes
	raw.Close()

	ts.stop(t) // every background line is in once the server has stopped
	log := logs.String()
	if testing.Verbose() {
		t.Log(log)
	}
	for what, secret := range secrets {
		if len(secret) < 8 {
			t.Fatalf("%s %q is too short to search for", what, secret)
		}
		if strings.Contains(log, secret) {
			t.Errorf("the log holds the %s %q", what, secret)
		}
	}
	for _, s := range []string{apiKey, widgetKey, adminPassword} {
		if !strings.Contains(banner.String(), s) {
			t.Errorf("the banner lost %q", s)
		}
	}

	// The log is still useful: JSON lines, one per request with its id, and the failed fetch's
	// cause with its URL scrubbed, not dropped.
	var sawPost, sawFetch bool
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("a log line is not JSON: %v: %s", err, sc.Bytes())
		}
		if line["msg"] == "request" {
			route, _ := line["route"].(string)
			if strings.Contains(route, "conv_") || strings.Contains(route, "?") {
				t.Errorf("a request line names the path as sent: %s", sc.Bytes())
			}
			if route == "/conversations/{id}/messages" && line["method"] == "POST" && line["status"] == 201.0 &&
				line["request_id"] == post.Header.Get("X-Request-Id") && line["latency"] != nil {
				sawPost = true
			}
		}
		if strings.Contains(sc.Text(), closed.Addr().String()+"/b.png?"+redacted) {
			sawFetch = true
		}
	}
	if !sawPost {
		t.Errorf("no request line for the keyed POST %s in:\n%s", post.Header.Get("X-Request-Id"), log)
	}
	if !sawFetch {
		t.Errorf("the failed attachment fetch is not logged with its scrubbed URL:\n%s", log)
	}
}

// The request line: one per request at debug level, naming the matched pattern; none at info.
func TestRequestLineAtDebugOnly(t *testing.T) {
	ts, logs := startLoggedServer(t, "text", &bytes.Buffer{})
	org := ts.newOrg(t, 0, 0)
	before := len(requestLines(logs.String())) // the start-up wait's /healthz
	rs := []resp{
		ts.do(t, "GET", "/healthz", "", nil),
		ts.do(t, "GET", "/conversations/conv_01J00000000000000000000000", org.APIKey, nil),
		ts.do(t, "GET", "/nowhere", "", nil),
		ts.do(t, "GET", "/widget.js", "", nil),
	}
	lines := requestLines(logs.String())[before:]
	want := []string{"/healthz", "/conversations/{id}", "unmatched", "/widget.js"}
	if len(lines) != len(rs) {
		t.Fatalf("%d requests, %d request lines:\n%s", len(rs), len(lines), logs.String())
	}
	for i, l := range lines {
		if l.route != want[i] || l.requestID == "" || l.requestID != rs[i].Header.Get("X-Request-Id") || l.status != fmt.Sprint(rs[i].Status) {
			t.Errorf("line %d: %+v, want route %s, request %s, status %d", i, l, want[i], rs[i].Header.Get("X-Request-Id"), rs[i].Status)
		}
	}

	quiet := &logCapture{}
	logger, err := newLogger(quiet, "text", "info")
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.Data = t.TempDir()
	info := startServerWith(t, cfg, logger, &bytes.Buffer{}, "http", newAPIClient("").hc)
	mustStatus(t, info.do(t, "GET", "/healthz", "", nil), 200)
	if n := len(requestLines(quiet.String())); n != 0 {
		t.Fatalf("%d request lines at info level:\n%s", n, quiet.String())
	}
}

type requestLine struct{ route, requestID, status string }

var textRequestLine = regexp.MustCompile(`msg=request request_id=(\S*) method=\S+ route=(\S+) status=(\d+) latency=\S+`)

func requestLines(log string) []requestLine {
	var out []requestLine
	for _, m := range textRequestLine.FindAllStringSubmatch(log, -1) {
		out = append(out, requestLine{requestID: m[1], route: m[2], status: m[3]})
	}
	return out
}

func TestLogFlagsRefuseUnknownValues(t *testing.T) {
	for _, c := range []struct{ format, level, want string }{
		{"yaml", "info", "--log-format"},
		{"text", "verbose", "--log-level"},
	} {
		cfg := defaultConfig()
		cfg.LogFormat, cfg.LogLevel = c.format, c.level
		if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("format %q level %q: %v", c.format, c.level, err)
		}
	}
}

func TestScrubKeepsWhatIsNotSecret(t *testing.T) {
	for in, want := range map[string]string{
		`Get "https://u:p@example.com/a.png?sig=abc#f": dial tcp`: `Get "https://REDACTED@example.com/a.png?REDACTED": dial tcp`,
		"key ak_abcdefghijklmnopqrstuvwxyz refused":               "key ak_REDACTED refused",
		"conversation conv_01J00000000000000000000000 not found":  "conversation conv_01J00000000000000000000000 not found",
		"https://example.com/hooks/awardee":                       "https://example.com/hooks/awardee",
		"has_many_words and snake_case_names":                     "has_many_words and snake_case_names",
	} {
		if got := scrub(in); got != want {
			t.Errorf("scrub(%q) = %q, want %q", in, got, want)
		}
	}
	// Errors are scrubbed too, whatever their type.
	a := scrubAttr(nil, slog.Any("err", errors.New("fetch http://x/y?token=secret: refused")))
	if got := a.Value.String(); got != "fetch http://x/y?REDACTED: refused" {
		t.Errorf("error attr scrubbed to %q", got)
	}
}

func TestVersionNamesTheBuild(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"version"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	line := out.String()
	if !strings.HasPrefix(line, "awardee ") || !strings.Contains(line, runtime.Version()) || !strings.Contains(line, runtime.GOOS+"/"+runtime.GOARCH) {
		t.Fatalf("version: %q", line)
	}
}

// A client's mistake that has a cause worth keeping, an attachment URL that answers 404, is
// logged as a warning with its request id: an operator's alerts on error lines must not fire on
// what a client sent.
func TestClientMistakesAreWarningsNotErrors(t *testing.T) {
	src := newImageServer(t)
	ts, logs := startLoggedServer(t, "json", &bytes.Buffer{}, allowPrivate)
	org := ts.newOrg(t, 0, 0)
	conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	r := ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey,
		fmt.Sprintf(`{"attachments":[{"url":%q}]}`, src.URL+"/missing.png"))
	mustStatus(t, r, 422)
	id := r.Header.Get("X-Request-Id")
	var levels []string
	for line := range strings.Lines(logs.String()) {
		var entry struct {
			Level     string `json:"level"`
			Msg       string `json:"msg"`
			RequestID string `json:"request_id"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.RequestID == id && entry.Msg != "request" {
			levels = append(levels, entry.Level)
		}
	}
	if len(levels) != 1 || levels[0] != "WARN" {
		t.Fatalf("the refused attachment's log lines have levels %v, want one WARN:\n%s", levels, logs.String())
	}
}
