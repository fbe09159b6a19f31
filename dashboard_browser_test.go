package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/web"
	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/dom"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	json "github.com/go-json-experiment/json"
)

// byRole finds elements by accessible role and name, as a screen reader (and section 12) names
// them. With partial, the name only has to contain name.
func byRole(role, name string, partial bool) chromedp.QueryOption {
	return chromedp.ByFunc(func(ctx context.Context, t *chromedp.Target, n *chromedp.Node) ([]cdp.NodeID, error) {
		q := accessibility.QueryAXTreeParams{NodeID: n.NodeID, Role: role}
		if !partial {
			q.AccessibleName = name
		}
		res, err := cdp.Call(ctx, t, accessibility.QueryAXTree, q)
		if err != nil {
			return nil, err
		}
		var ids []cdp.BackendNodeID
		for _, an := range res.Nodes {
			if an.Ignored || an.BackendDOMNodeID == 0 {
				continue
			}
			if partial {
				var got string
				if an.Name == nil || json.Unmarshal(an.Name.Value, &got) != nil || !strings.Contains(got, name) {
					continue
				}
			}
			ids = append(ids, an.BackendDOMNodeID)
		}
		if len(ids) == 0 {
			return nil, nil
		}
		pushed, err := cdp.Call(ctx, t, dom.PushNodesByBackendIDsToFrontend, dom.PushNodesByBackendIDsToFrontendParams{BackendNodeIDs: ids})
		return pushed.NodeIDs, err
	})
}

// appTab is one browser appTab on the dashboard.
type appTab struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

func (b *appTab) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

func (b *appTab) click(role, name string) {
	b.t.Helper()
	b.do("click "+role+" "+name, chromedp.Click("", byRole(role, name, false), chromedp.NodeVisible))
}

// text is the text content of the element found by role and name.
func (b *appTab) text(role, name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.TextContent("", byRole(role, name, false)))
	if err != nil {
		b.t.Fatalf("text of %s %s: %v", role, name, err)
	}
	return s
}

// waitText waits until the element's text satisfies ok.
func (b *appTab) waitText(role, name, what string, ok func(string) bool) string {
	b.t.Helper()
	deadline := time.Now().Add(browserWait)
	for {
		s := b.text(role, name)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s: %s %q reads %q", what, role, name, s)
		}
		// Wait for the DOM to change rather than spin: the next mutation anywhere in the page.
		ctx, cancel := context.WithTimeout(b.ctx, time.Second)
		chromedp.Run(ctx, chromedp.Poll[bool](`new Promise(r => { const o = new MutationObserver(() => { o.disconnect(); r(true); }); o.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true}); })`, chromedp.WithPollingTimeout(time.Second)))
		cancel()
	}
}

func (b *appTab) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(b.shots, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}

func (b *appTab) signIn(url, email, password string) {
	b.t.Helper()
	b.do("open the dashboard", chromedp.Navigate(url+"/app/"))
	b.do("type the email", chromedp.SendKeys("", email, byRole("textbox", "Email", false), chromedp.NodeVisible))
	b.do("type the password", chromedp.SendKeys("", password, byRole("textbox", "Password", false), chromedp.NodeVisible))
	b.click("button", "Sign in")
	b.do("see the conversations", chromedp.WaitVisible("", byRole("list", "Conversations", false)))
	b.waitText("status", "Connection", "connected", func(s string) bool { return s == "Live" })
}

func (b *appTab) noSidewaysScroll(what string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	widths, err := chromedp.Run(ctx, chromedp.Evaluate[[]int](`[document.documentElement.scrollWidth, document.documentElement.clientWidth]`))
	if err != nil {
		b.t.Fatal(err)
	}
	if widths[0] > widths[1] {
		b.t.Fatalf("%s at 360 px: the page is %d px wide in a %d px viewport", what, widths[0], widths[1])
	}
}

// TestDashboardInABrowser walks the dashboard as a support team uses it, in headless Chromium,
// finding every element by its accessible role and name.
func TestDashboardInABrowser(t *testing.T) {
	ts := newTestServer(t)
	created, err := ts.db.CreateOrg(context.Background(), engine.NewOrg{Name: "browser", Rate: 1e6, Burst: 1e6, InitialStatus: engine.StatusAgentRequested})
	if err != nil {
		t.Fatal(err)
	}
	org := testOrg{created}
	ana := ts.newMember(t, org.OrgID, "ana@example.com", engine.RoleAgent)
	bob := ts.newMember(t, org.OrgID, "bob@example.com", engine.RoleAgent)
	shots := screenshotDir(t)
	browser := newBrowser(t)
	a := &appTab{t: t, ctx: browser, shots: shots}
	a.signIn(ts.URL, "ana@example.com", ana.Password)

	// A visitor writes; the message appears without a reload.
	var opened struct {
		Conversation engine.Conversation `json:"conversation"`
		VisitorToken string              `json:"visitor_token"`
	}
	mustStatus(t, ts.do(t, "POST", "/widget/conversations", org.WidgetKey, `{"visitor":{"name":"Vera","email":"vera@example.com"}}`), 201).Decode(t, &opened)
	convID, visitor := opened.Conversation.ID, opened.VisitorToken
	postVisitor := func(text string) {
		t.Helper()
		mustStatus(t, ts.do(t, "POST", "/widget/conversations/"+convID+"/messages", visitor, map[string]string{"text": text}), 201)
	}
	postVisitor("Hello, my order never came")
	a.waitText("list", "Conversations", "the new conversation in the list", func(s string) bool { return strings.Contains(s, "Vera") && strings.Contains(s, "waiting") })
	if list := a.text("list", "Conversations"); !strings.Contains(list, "1") {
		t.Fatalf("no unread count in %q", list)
	}
	a.do("the title badge", chromedp.Poll[chromedp.Void](`document.title === "(1) Awardee"`))
	a.screenshot("inbox")

	a.do("open the conversation", chromedp.Click("", byRole("button", "Vera", true), chromedp.NodeVisible))
	a.waitText("log", "Messages", "the visitor's message in the thread", func(s string) bool { return strings.Contains(s, "my order never came") })
	a.do("type a reply", chromedp.SendKeys("", "Sorry about that, I am on it", byRole("textbox", "Reply", false), chromedp.NodeVisible))
	a.do("press Enter", chromedp.KeyEvent(kb.Enter))
	a.waitText("log", "Messages", "the reply and the marker in the thread", func(s string) bool {
		return strings.Contains(s, "I am on it") && strings.Contains(s, engine.AgentJoinedText)
	})
	a.screenshot("thread")

	// The visitor's side reads the reply as the dashboard's, and the conversation is the member's.
	var page struct{ Data []engine.Message }
	mustStatus(t, ts.do(t, "GET", "/widget/conversations/"+convID+"/messages", visitor, nil), 200).Decode(t, &page)
	last := page.Data[len(page.Data)-1]
	markers := 0
	for _, m := range page.Data {
		if m.Role == engine.RoleSystem {
			markers++
		}
	}
	if last.Text != "Sorry about that, I am on it" || last.Metadata.Source != "dashboard" || last.Metadata.MemberID != ana.Member.ID || markers != 1 {
		t.Fatalf("the visitor reads %+v with %d markers", page.Data, markers)
	}
	conv := func() engine.Conversation {
		var c engine.Conversation
		mustStatus(t, ts.do(t, "GET", "/conversations/"+convID, org.APIKey, nil), 200).Decode(t, &c)
		return c
	}
	if c := conv(); c.Status != engine.StatusOpen || c.Assignee == nil || *c.Assignee != ana.Member.ID {
		t.Fatalf("after the reply: %+v", c)
	}

	a.click("button", "Resolve")
	a.do("see Reopen", chromedp.WaitVisible("", byRole("button", "Reopen", false)))
	if c := conv(); c.Status != engine.StatusResolved {
		t.Fatalf("after Resolve: %s", c.Status)
	}
	a.click("button", "Reopen")
	a.do("see Resolve", chromedp.WaitVisible("", byRole("button", "Resolve", false)))
	if c := conv(); c.Status != engine.StatusOpen {
		t.Fatalf("after Reopen: %s", c.Status)
	}

	// A second member, in a browser context of their own, sees it assigned to someone else.
	bobCtx, cancelBob := chromedp.NewContext(browser, chromedp.WithNewBrowserContext(), chromedp.WithNewWindow(true))
	defer cancelBob()
	if err := chromedp.Do(bobCtx); err != nil { // opens the appTab, outside any timeout
		t.Fatal(err)
	}
	b := &appTab{t: t, ctx: bobCtx, shots: shots}
	b.signIn(ts.URL, "bob@example.com", bob.Password)
	b.waitText("list", "Conversations", "the conversation, assigned", func(s string) bool {
		return strings.Contains(s, "Vera") && strings.Contains(s, "Assigned to a teammate")
	})

	// Offline while three visitor messages arrive: after the network is back, all three, once,
	// in order.
	a.do("go offline", offline(true))
	a.waitText("status", "Connection", "offline", func(s string) bool { return s == "Offline" })
	for _, text := range []string{"first while away", "second while away", "third while away"} {
		postVisitor(text)
	}
	a.do("come back online", offline(false))
	thread := a.waitText("log", "Messages", "the three messages after the network loss", func(s string) bool { return strings.Contains(s, "third while away") })
	first, second, third := strings.Index(thread, "first while away"), strings.Index(thread, "second while away"), strings.Index(thread, "third while away")
	if !(first >= 0 && first < second && second < third) {
		t.Fatalf("thread after the loss: %q", thread)
	}
	for _, text := range []string{"first while away", "second while away", "third while away"} {
		if n := strings.Count(thread, text); n != 1 {
			t.Fatalf("%q shown %d times", text, n)
		}
	}

	// Visitor POST to the message in the DOM, over 50 messages. A visitor token may post 5 a
	// second (section 8), so the probes keep to that pace rather than meet 429.
	var latencies []time.Duration
	pace := time.NewTicker(time.Second/visitorRate + 10*time.Millisecond)
	defer pace.Stop()
	for i := range 50 {
		<-pace.C
		text := fmt.Sprintf("latency probe %d.", i)
		start := time.Now()
		postVisitor(text)
		ctx, cancel := context.WithTimeout(a.ctx, browserWait)
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(`document.getElementById('messages').textContent.includes(%q)`, text), chromedp.WithPollingMutation()))
		cancel()
		if err != nil {
			t.Fatalf("probe %d never shown: %v", i, err)
		}
		latencies = append(latencies, time.Since(start))
	}
	slices.Sort(latencies)
	t.Logf("visitor POST to message in the dashboard's DOM: median %v, p90 %v, max %v (50 messages)", latencies[25], latencies[45], latencies[49])

	// 360 px wide: the inbox and the open thread fit without sideways scrolling.
	a.do("narrow the window", chromedp.EmulateViewport(360, 740))
	a.noSidewaysScroll("the thread")
	a.screenshot("thread-360")
	a.click("button", "Back")
	a.noSidewaysScroll("the inbox")
	a.screenshot("inbox-360")
	a.click("button", "Sign out")
	a.do("see the sign-in form", chromedp.WaitVisible("", byRole("button", "Sign in", false)))
}

// offline switches the appTab's network off or back on: connections fail, and the page's
// navigator.onLine and online/offline events follow.
func offline(off bool) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		if _, err := cdp.Call(ctx, t, network.Enable, network.EnableParams{}); err != nil {
			return err
		}
		if _, err := cdp.Call(ctx, t, network.EmulateNetworkConditionsByRule, network.EmulateNetworkConditionsByRuleParams{
			MatchedNetworkConditions: []*network.Conditions{{Offline: off, DownloadThroughput: -1, UploadThroughput: -1}},
		}); err != nil {
			return err
		}
		_, err := cdp.Call(ctx, t, network.OverrideNetworkState, network.OverrideNetworkStateParams{Offline: off, DownloadThroughput: -1, UploadThroughput: -1})
		return err
	})
}

// TestDashboardTransferSize reports what a first visit to the dashboard transfers, gzipped.
func TestDashboardTransferSize(t *testing.T) {
	app := web.NewApp("/app/")
	total := 0
	names := app.Names()
	slices.Sort(names)
	for _, name := range names {
		total += app.GzippedSize(name)
	}
	if total == 0 {
		t.Fatal("the dashboard serves no files")
	}
	t.Logf("dashboard files %v: %d bytes gzipped in total", names, total)
}
