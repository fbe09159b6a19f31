package main

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// The host page: another origin, a strict Content-Security-Policy that allows the server's
// origin and nothing inline, hostile CSS, and a recorder of every CSP violation.
var hostPage = template.Must(template.New("host").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Host</title>
<link rel="stylesheet" href="/hostile.css">
<script src="/record.js"></script>
</head><body>
<h1 id="headline">Our shop</h1>
<div id="content"><p class="lead">Everything must go.</p><button id="buy">Buy</button></div>
{{if .Key}}<script src="{{.Server}}/widget.js" data-awardee-key="{{.Key}}"{{if .UserID}} data-awardee-user-id="{{.UserID}}" data-awardee-user-hash="{{.UserHash}}"{{end}} async></script>{{end}}
</body></html>`))

const hostileCSS = `* { all: revert !important; font-size: 40px !important; font-family: "Comic Sans MS", cursive !important; }
div { display: none !important; }
button { background: red !important; width: 400px !important; height: 200px !important; position: static !important; }
[role], textarea, svg { visibility: hidden !important; }
body > * { z-index: 1 !important; opacity: 0.9 !important; }
`

// record.js keeps every violation, and a snapshot of the page's own elements (their markup
// and computed styles) for comparing before and after the widget.
const recordJS = `window.__violations = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__violations.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + (e.sourceFile || ''));
}, true);
window.__pageSnapshot = function () {
  return Array.from(document.querySelectorAll('body *')).filter(function (e) {
    return e.localName !== 'awardee-chat' && e.localName !== 'script';
  }).map(function (e) {
    var cs = getComputedStyle(e);
    return e.outerHTML + ' | ' + Array.from(cs).map(function (p) { return p + ':' + cs.getPropertyValue(p); }).join(';');
  }).join('\n') + '\n' + document.body.className + document.documentElement.className + document.cookie;
};
`

type hostSite struct {
	*httptest.Server
	serverURL string
}

func newHostSite(t *testing.T, serverURL string) *hostSite {
	t.Helper()
	ws := "ws" + strings.TrimPrefix(serverURL, "http")
	csp := fmt.Sprintf("default-src 'none'; script-src 'self' %[1]s; style-src 'self' %[1]s; connect-src %[1]s %[2]s; img-src %[1]s; font-src 'none'; frame-src %[1]s; base-uri 'none'; form-action 'none'", serverURL, ws)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		w.Header().Set("Content-Security-Policy", csp)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		hostPage.Execute(w, map[string]string{"Server": serverURL, "Key": q.Get("key"), "UserID": q.Get("uid"), "UserHash": q.Get("uhash")})
	})
	mux.HandleFunc("/hostile.css", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/css")
		w.Write([]byte(hostileCSS))
	})
	mux.HandleFunc("/record.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript")
		w.Write([]byte(recordJS))
	})
	site := &hostSite{Server: httptest.NewServer(mux), serverURL: serverURL}
	t.Cleanup(site.Close)
	return site
}

func (h *hostSite) page(key string, user ...string) string {
	u := h.URL + "/?key=" + key
	if len(user) == 2 {
		u += "&uid=" + user[0] + "&uhash=" + user[1]
	}
	return u
}

// screenshotDir keeps the screenshots: AWARDEE_SCREENSHOTS names a directory to keep them in
// (CI artifacts), otherwise they go to the test's temporary directory.
func screenshotDir(t *testing.T) string {
	if d := os.Getenv("AWARDEE_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// photoServer serves one PNG on loopback, for the team to attach.
func photoServer(t *testing.T) string {
	img := image.NewRGBA(image.Rect(0, 0, 120, 80))
	for x := 0; x < 120; x++ {
		for y := 0; y < 80; y++ {
			img.Set(x, y, color.RGBA{uint8(x * 2), 90, uint8(y * 3), 255})
		}
	}
	var buf bytes.Buffer
	png.Encode(&buf, img)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Write(buf.Bytes())
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/photo.png"
}

func newWidgetServer(t *testing.T) *testServer {
	return newTestServer(t, func(c *Config) { c.AllowPrivateNetworks = true })
}

func (ts *testServer) orgWith(t *testing.T, initial engine.Status) testOrg {
	t.Helper()
	created, err := ts.db.CreateOrg(context.Background(), engine.NewOrg{Name: t.Name(), Rate: 1e6, Burst: 1e6, InitialStatus: initial})
	if err != nil {
		t.Fatal(err)
	}
	return testOrg{created}
}

// onlyConversation waits for the org's one conversation to exist and returns it.
func (ts *testServer) onlyConversation(t *testing.T, apiKey string) engine.Conversation {
	t.Helper()
	var list struct{ Data []engine.Conversation }
	mustStatus(t, ts.do(t, "GET", "/conversations", apiKey, nil), 200).Decode(t, &list)
	if len(list.Data) != 1 {
		t.Fatalf("%d conversations, want 1", len(list.Data))
	}
	return list.Data[0]
}

func (ts *testServer) conversationCount(t *testing.T, apiKey string) int {
	var list struct{ Data []engine.Conversation }
	mustStatus(t, ts.do(t, "GET", "/conversations", apiKey, nil), 200).Decode(t, &list)
	return len(list.Data)
}

func (tb *tab) violations() []string {
	tb.t.Helper()
	var v []string
	tb.eval(`window.__violations`, &v)
	return v
}

// checkOrigins fails on any request to a host other than the page's and the server's.
func checkOrigins(t *testing.T, tb *tab, allowed ...string) {
	t.Helper()
	for _, r := range tb.requested() {
		_, u, _ := strings.Cut(r, " ")
		ok := strings.HasPrefix(u, "data:")
		for _, a := range allowed {
			ws := "ws" + strings.TrimPrefix(a, "http")
			ok = ok || strings.HasPrefix(u, a+"/") || strings.HasPrefix(u, ws+"/")
		}
		if !ok {
			t.Errorf("the page requested %s, outside %v", u, allowed)
		}
	}
}

func TestWidgetInBrowser(t *testing.T) {
	browser := newBrowser(t)
	shots := screenshotDir(t)
	t.Run("thread", func(t *testing.T) { widgetThread(t, browser, shots) })
	t.Run("offline", func(t *testing.T) { widgetOffline(t, browser) })
	t.Run("rate limited", func(t *testing.T) { widgetRateLimited(t, browser) })
	t.Run("verified", func(t *testing.T) { widgetVerified(t, browser, shots) })
	t.Run("latency", func(t *testing.T) { widgetLatency(t, browser) })
	t.Logf("screenshots in %s", shots)
}

func widgetThread(t *testing.T, browser context.Context, shots string) {
	ts := newWidgetServer(t)
	org := ts.orgWith(t, engine.StatusBotActive)
	site := newHostSite(t, ts.URL)
	tb := newTab(t, browser)

	// The page as it is without the widget, to compare with later.
	tb.navigate(site.page(""))
	var before string
	tb.eval(`window.__pageSnapshot()`, &before)

	tb.navigate(site.page(org.WidgetKey))
	tb.waitAX("button", "Open chat")
	tb.waitNoAX("dialog", "Chat")
	// The hostile stylesheet reaches neither the launcher's box nor its type.
	var launcher struct{ W, H, Right, Bottom, Font float64 }
	tb.call(tb.waitAX("button", "Open chat"), `function(){const r=this.getBoundingClientRect();
		return {W:r.width,H:r.height,Right:innerWidth-r.right,Bottom:innerHeight-r.bottom,Font:parseFloat(getComputedStyle(this).fontSize)}}`, &launcher)
	if launcher.W != 56 || launcher.H != 56 || launcher.Right != 20 || launcher.Bottom != 20 || launcher.Font != 15 {
		t.Fatalf("the launcher is %+v, not 56x56 at 20px from the corner in 15px type", launcher)
	}
	tb.screenshot(shots, "widget-closed")
	if n := ts.conversationCount(t, org.APIKey); n != 0 {
		t.Fatalf("a page load opened %d conversations", n)
	}

	tb.click("button", "Open chat")
	tb.waitAX("dialog", "Chat")
	if !tb.focused("textbox", "Message") {
		t.Fatal("focus did not move into the panel")
	}
	tb.typeInto("textbox", "Message", "Hello from the page")
	tb.pressEnter()
	tb.waitLog("the visitor's message", func(items []string) bool {
		return countOf(items, "Hello from the page") == 1 && countOf(items, "Sending") == 0
	})

	var left string
	tb.call(tb.waitAX("textbox", "Message"), `function(){return this.value}`, &left)
	if left != "" {
		t.Fatalf("the textbox holds %q after Enter sent it", left)
	}
	conv := ts.onlyConversation(t, org.APIKey)
	msgs := ts.messages(t, org.APIKey, conv.ID)
	if len(msgs) != 1 || msgs[0].Metadata.Source != "widget" || msgs[0].Text != "Hello from the page" {
		t.Fatalf("stored messages %+v", msgs)
	}

	// bot_active: the visitor asks for a person; the panel says one will answer.
	tb.click("button", "Talk to a human")
	tb.waitAX("status", "")
	if !tb.poll(func(context.Context) bool {
		return fetchConversation(t, ts, org.APIKey, conv.ID).Status == engine.StatusAgentRequested
	}) {
		t.Fatal("request-agent did not reach the server")
	}
	tb.waitNoAX("button", "Talk to a human")
	var note string
	tb.call(tb.waitAX("status", ""), `function(){return this.textContent}`, &note)
	if !strings.Contains(note, "person") {
		t.Fatalf("the waiting line says %q", note)
	}

	// The team answers (a takeover) and attaches an image: both appear without a reload.
	mustStatus(t, ts.do(t, "POST", "/conversations/"+conv.ID+"/messages", org.APIKey, `{"text":"Hi, I am Ann from the team."}`), 201)
	img := photoServer(t)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+conv.ID+"/messages", org.APIKey, fmt.Sprintf(`{"text":"Here is a photo","attachments":[{"url":%q}]}`, img)), 201)
	items := tb.waitLog("the marker, the reply and the photo", func(items []string) bool {
		return countOf(items, "A team member has joined") == 1 && countOf(items, "Ann from the team") == 1 && countOf(items, "Here is a photo") == 1
	})
	photo := tb.waitAX("image", "Image")
	var loaded bool
	if !tb.poll(func(ctx context.Context) bool {
		return tb.callCtx(ctx, photo, `function(){return this.complete && this.naturalWidth === 120}`, &loaded) == nil && loaded
	}) {
		t.Fatal("the attached image did not load")
	}
	tb.screenshot(shots, "widget-open-thread")

	// Escape closes and gives the focus back to the launcher.
	tb.press("\x1b")
	tb.waitNoAX("dialog", "Chat")
	if !tb.focused("button", "Open chat") {
		t.Fatal("focus did not return to the launcher")
	}

	// A reload continues the same thread, in the same order.
	tb.navigate(site.page(org.WidgetKey))
	tb.click("button", "Open chat")
	tb.waitLog("the thread after a reload", func(got []string) bool { return slices.Equal(got, items) })
	if n := ts.conversationCount(t, org.APIKey); n != 1 {
		t.Fatalf("%d conversations after a reload", n)
	}

	var after string
	tb.eval(`window.__pageSnapshot()`, &after)
	if after != before {
		t.Errorf("the widget changed the page's own elements:\nbefore %.400s\nafter  %.400s", before, after)
	}
	if v := tb.violations(); len(v) > 0 {
		t.Errorf("CSP violations: %q", v)
	}
	checkOrigins(t, tb, site.URL, ts.URL)
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{ts.URL, site.URL}})
	if err != nil || len(cookies.Cookies) > 0 {
		t.Errorf("cookies %v (err %v)", cookies.Cookies, err)
	}
	// The recorder itself works: an inline style is a violation it sees.
	tb.eval(`document.getElementById('headline').setAttribute('style', 'color: red'); new Promise(r => setTimeout(r, 50))`, nil)
	if !tb.poll(func(context.Context) bool { return len(tb.violations()) > 0 }) {
		t.Error("the violation recorder saw nothing of an inline style")
	}
}

func widgetOffline(t *testing.T, browser context.Context) {
	ts := newWidgetServer(t)
	org := ts.orgWith(t, engine.StatusOpen)
	site := newHostSite(t, ts.URL)
	tb := newTab(t, browser)
	tb.navigate(site.page(org.WidgetKey))
	tb.click("button", "Open chat")
	tb.typeInto("textbox", "Message", "Before the tunnel")
	tb.click("button", "Send")
	tb.waitLog("the first message", func(items []string) bool {
		return countOf(items, "Before the tunnel") == 1 && countOf(items, "Sending") == 0
	})
	conv := ts.onlyConversation(t, org.APIKey)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+conv.ID+"/messages", org.APIKey, `{"text":"reply zero"}`), 201)
	tb.waitLog("the live reply", func(items []string) bool { return countOf(items, "reply zero") == 1 })

	tb.setOffline(true)
	var note string
	if !tb.poll(func(ctx context.Context) bool {
		n, err := tb.findAX(ctx, "status", "")
		return err == nil && len(n) == 1 && tb.callCtx(ctx, n[0], `function(){return this.textContent}`, &note) == nil && strings.Contains(note, "offline")
	}) {
		t.Fatalf("no offline line; it says %q", note)
	}
	for i := 1; i <= 3; i++ {
		mustStatus(t, ts.do(t, "POST", "/conversations/"+conv.ID+"/messages", org.APIKey, fmt.Sprintf(`{"text":"reply %d of three"}`, i)), 201)
	}
	// Typed while offline: kept, shown pending.
	tb.typeInto("textbox", "Message", "Sent from the tunnel")
	tb.pressEnter()
	items := tb.waitLog("the pending message", func(items []string) bool {
		return countOf(items, "Sent from the tunnel") == 1 && countOf(items, "Sending") == 1
	})
	if countOf(items, "of three") != 0 {
		t.Fatalf("replies arrived while offline: %q", items)
	}

	tb.setOffline(false)
	items = tb.waitLog("the three replies and the sent message", func(items []string) bool {
		return countOf(items, "of three") == 3 && countOf(items, "Sending") == 0 && countOf(items, "Sent from the tunnel") == 1
	})
	var order []string
	for _, it := range items {
		if strings.Contains(it, "of three") {
			order = append(order, it)
		}
	}
	if !slices.Equal(order, []string{"reply 1 of three", "reply 2 of three", "reply 3 of three"}) {
		t.Fatalf("replies in the log: %q", order)
	}
	// Nothing was posted twice, and nothing shows twice.
	var texts []string
	for _, m := range ts.messages(t, org.APIKey, conv.ID) {
		texts = append(texts, m.Text)
	}
	if countOf(texts, "Sent from the tunnel") != 1 || len(texts) != 6 {
		t.Fatalf("stored %q", texts)
	}
	for _, want := range texts {
		if n := countOf(items, want); n != 1 {
			t.Fatalf("%q shown %d times in %q", want, n, items)
		}
	}

	// The page goes away while a send is being committed: its answer is lost. The reloaded
	// widget sends it again from localStorage with the same Idempotency-Key, which makes the
	// retry that message, not a second one.
	release := ts.holdCommitLoop(t)
	sentBefore := len(tb.requested())
	tb.typeInto("textbox", "Message", "Exactly once")
	tb.pressEnter()
	if !tb.poll(func(context.Context) bool { return commitQueueLength(t, ts) > 0 }) {
		release()
		t.Fatal("the send never reached the server")
	}
	tb.navigate(site.page(org.WidgetKey))
	release()
	tb.click("button", "Open chat")
	shown := tb.waitLog("the retried send", func(items []string) bool {
		return countOf(items, "Exactly once") >= 1 && countOf(items, "Sending") == 0
	})
	posts := 0
	for _, r := range tb.requested()[sentBefore:] {
		if r == "POST "+ts.URL+"/widget/conversations/"+conv.ID+"/messages" {
			posts++
		}
	}
	texts = nil
	for _, m := range ts.messages(t, org.APIKey, conv.ID) {
		texts = append(texts, m.Text)
	}
	if n := countOf(texts, "Exactly once"); n != 1 || posts < 2 || countOf(shown, "Exactly once") != 1 {
		t.Fatalf("stored %d copies after %d posts of it; the log shows %q", n, posts, shown)
	}
	if v := tb.violations(); len(v) > 0 {
		t.Errorf("CSP violations: %q", v)
	}
}

// widgetRateLimited sends faster than the org's visitor window (4/s, burst 3) allows: the
// widget waits out each 429's Retry-After and delivers every message once, in order.
func widgetRateLimited(t *testing.T, browser context.Context) {
	ts := newWidgetServer(t)
	created, err := ts.db.CreateOrg(context.Background(), engine.NewOrg{Name: t.Name(), Rate: 4, Burst: 3, InitialStatus: engine.StatusOpen})
	if err != nil {
		t.Fatal(err)
	}
	org := testOrg{created}
	site := newHostSite(t, ts.URL)
	tb := newTab(t, browser)
	tb.navigate(site.page(org.WidgetKey))
	tb.click("button", "Open chat")
	const n = 10
	var want []string
	for i := 1; i <= n; i++ {
		want = append(want, fmt.Sprintf("burst message %02d", i))
		tb.paste("textbox", "Message", want[i-1])
		tb.pressEnter()
	}
	items := tb.waitLog("every message sent", func(items []string) bool {
		return countOf(items, "burst message") == n && countOf(items, "Sending") == 0
	})
	if countOf(items, "Not sent") != 0 {
		t.Fatalf("a message was given up: %q", items)
	}
	conv := ts.onlyConversation(t, org.APIKey)
	var got []string
	for _, m := range ts.messages(t, org.APIKey, conv.ID) {
		got = append(got, m.Text)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("stored %q", got)
	}
	// More posts than messages: some were refused with 429 and sent again.
	posts := 0
	for _, r := range tb.requested() {
		if r == "POST "+ts.URL+"/widget/conversations/"+conv.ID+"/messages" {
			posts++
		}
	}
	if posts <= n {
		t.Fatalf("%d posts for %d messages: the burst never met the limit", posts, n)
	}
}

// commitQueueLength reads the write units waiting for a batch from /metrics.
func commitQueueLength(t *testing.T, ts *testServer) float64 {
	r := mustStatus(t, ts.do(t, "GET", "/metrics", "", nil), 200)
	for _, line := range strings.Split(string(r.Body), "\n") {
		if v, ok := strings.CutPrefix(line, "awardee_commit_queue_length "); ok {
			var n float64
			fmt.Sscan(v, &n)
			return n
		}
	}
	t.Fatal("no awardee_commit_queue_length in /metrics")
	return 0
}

func widgetVerified(t *testing.T, browser context.Context, shots string) {
	ts := newWidgetServer(t)
	org := ts.orgWith(t, engine.StatusOpen)
	site := newHostSite(t, ts.URL)
	secret := identitySecret(t, ts, org.APIKey)
	page := site.page(org.WidgetKey, "user-77", signUser(secret, "user-77"))

	laptop := newTab(t, browser)
	laptop.navigate(page)
	laptop.click("button", "Open chat")
	laptop.typeInto("textbox", "Message", "Written on my laptop")
	laptop.pressEnter()
	laptop.waitLog("the laptop's message", func(items []string) bool {
		return countOf(items, "Written on my laptop") == 1 && countOf(items, "Sending") == 0
	})
	conv := ts.onlyConversation(t, org.APIKey)
	if v := conv.Visitor; v.UserID == nil || *v.UserID != "user-77" || v.Verified == nil || !*v.Verified {
		t.Fatalf("visitor %+v", v)
	}

	// The same user on a phone (another browser context, a narrow screen) sees that thread.
	phone := newTab(t, browser)
	phone.do(chromedp.EmulateViewport(375, 720, chromedp.EmulateScale(2)))
	phone.navigate(page)
	phone.click("button", "Open chat")
	phone.waitLog("the laptop's thread on the phone", func(items []string) bool { return countOf(items, "Written on my laptop") == 1 })
	var box struct{ W, H float64 }
	phone.call(phone.waitAX("dialog", "Chat"), `function(){const r=this.getBoundingClientRect();return {W:r.width,H:r.height}}`, &box)
	if box.W != 375 || box.H != 720 {
		t.Fatalf("on a phone the panel is %vx%v, not the whole 375x720 screen", box.W, box.H)
	}
	phone.typeInto("textbox", "Message", "And this from my phone")
	phone.pressEnter()
	phone.waitLog("the phone's message", func(items []string) bool {
		return countOf(items, "from my phone") == 1 && countOf(items, "Sending") == 0
	})
	phone.screenshot(shots, "widget-phone")
	laptop.waitLog("the phone's message on the laptop", func(items []string) bool { return countOf(items, "from my phone") == 1 })
	if n := ts.conversationCount(t, org.APIKey); n != 1 {
		t.Fatalf("%d conversations for one verified user", n)
	}

	// A forged hash opens nothing, and the visitor is told their message was not sent.
	forger := newTab(t, browser)
	forger.navigate(site.page(org.WidgetKey, "user-77", signUser("ids_guessed", "user-77")))
	forger.click("button", "Open chat")
	forger.typeInto("textbox", "Message", "Let me in")
	forger.pressEnter()
	items := forger.waitLog("the refusal", func(items []string) bool { return countOf(items, "Not sent") == 1 })
	if countOf(items, "Written on my laptop") != 0 {
		t.Fatalf("a forged hash saw the thread: %q", items)
	}
	if n := ts.conversationCount(t, org.APIKey); n != 1 {
		t.Fatalf("%d conversations after a forged hash", n)
	}
	for _, tb := range []*tab{laptop, phone, forger} {
		if v := tb.violations(); len(v) > 0 {
			t.Errorf("CSP violations: %q", v)
		}
	}
}

// widgetLatency measures the time from a team reply's 201 to its text in the widget's DOM,
// stamped by a MutationObserver on the log. It reports, never asserts.
func widgetLatency(t *testing.T, browser context.Context) {
	ts := newWidgetServer(t)
	org := ts.orgWith(t, engine.StatusOpen)
	site := newHostSite(t, ts.URL)
	tb := newTab(t, browser)
	tb.navigate(site.page(org.WidgetKey))
	tb.click("button", "Open chat")
	tb.typeInto("textbox", "Message", "start")
	tb.pressEnter()
	tb.waitLog("the first message", func(items []string) bool { return countOf(items, "start") == 1 && countOf(items, "Sending") == 0 })
	conv := ts.onlyConversation(t, org.APIKey)
	log := tb.waitAX("log", "Messages")
	tb.call(log, `function(){
		window.__arrived = {};
		new MutationObserver(ms => {
			const at = performance.timeOrigin + performance.now();
			for (const m of ms) for (const n of m.addedNodes) {
				const k = (n.textContent || '').match(/lat-\d+/);
				if (k && !window.__arrived[k[0]]) window.__arrived[k[0]] = at;
			}
		}).observe(this, {childList: true});
	}`, nil)
	const n = 50
	var ms []float64
	for i := 0; i < n; i++ {
		token := fmt.Sprintf("lat-%d", i)
		mustStatus(t, ts.do(t, "POST", "/conversations/"+conv.ID+"/messages", org.APIKey, `{"text":"`+token+`"}`), 201)
		got := float64(time.Now().UnixNano()) / 1e6
		var at float64
		if !tb.poll(func(context.Context) bool {
			tb.eval(`window.__arrived[`+fmt.Sprintf("%q", token)+`] || 0`, &at)
			return at > 0
		}) {
			t.Fatalf("%s never reached the DOM", token)
		}
		ms = append(ms, at-got)
	}
	sort.Float64s(ms)
	t.Logf("reply 201 → text in the widget's DOM over %d replies: median %.2f ms, min %.2f ms, max %.2f ms", n, ms[n/2], ms[0], ms[n-1])
	fmt.Fprintf(os.Stderr, "widget latency: median %.2f ms over %d (201 → DOM)\n", ms[n/2], n)
}
