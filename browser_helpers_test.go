package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/dom"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// browserWait bounds every wait on the browser: generous, because CI runs on two shared cores.
const browserWait = 20 * time.Second

// newBrowser starts headless Chromium for one test; each tab it opens gets a browser context
// of its own (own storage, own cookies), like a separate device. Without Chromium the test is
// skipped, or fails when CI is set.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed (.ci/run installs it)")
		}
		t.Skip("chromium is not installed")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	// Start the browser now, so the first tab's waits do not pay for it.
	if _, err := chromedp.Run(browser, chromedp.Evaluate[int](`1`)); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return browser
}

// tab is one page in a browser context of its own, with the requests it made recorded.
type tab struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	requests []string // "METHOD URL" of every request of the page, "WS URL" for WebSockets
}

func newTab(t *testing.T, browser context.Context) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	tb := &tab{t: t, ctx: ctx}
	if err := chromedp.Listen(ctx, func(ev any) {
		switch e := ev.(type) {
		case *network.EventRequestWillBeSent:
			tb.mu.Lock()
			tb.requests = append(tb.requests, e.Request.Method+" "+e.Request.URL)
			tb.mu.Unlock()
		case *network.EventWebSocketCreated:
			tb.mu.Lock()
			tb.requests = append(tb.requests, "WS "+e.URL)
			tb.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	return tb
}

func (tb *tab) requested() []string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return append([]string(nil), tb.requests...)
}

func (tb *tab) do(steps ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		tb.t.Fatal(err)
	}
}

func (tb *tab) navigate(url string) { tb.t.Helper(); tb.do(chromedp.Navigate(url)) }

// eval runs js in the page and decodes its value into out (nil: ignore it).
func (tb *tab) eval(js string, out any) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	res, err := chromedp.Call(ctx, runtime.Evaluate, runtime.EvaluateParams{Expression: js, ReturnByValue: ptrTo(true), AwaitPromise: ptrTo(true)})
	if err != nil {
		tb.t.Fatalf("eval %q: %v", js, err)
	}
	if res.ExceptionDetails != nil {
		tb.t.Fatalf("eval %q: %s", js, exceptionText(res.ExceptionDetails))
	}
	if out != nil {
		if err := json.Unmarshal(res.Result.Value, out); err != nil {
			tb.t.Fatalf("eval %q: decode %s: %v", js, res.Result.Value, err)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

// axNode is an element found by accessible role and name, as assistive technology finds it.
type axNode struct {
	backend cdp.BackendNodeID
	props   map[string]jsontext.Value
}

// findAX returns the elements the accessibility tree exposes (not ignored: hidden ones are)
// with this role and name; name "" matches any.
func (tb *tab) findAX(ctx context.Context, role, name string) ([]axNode, error) {
	doc, err := chromedp.Call(ctx, dom.GetDocument, dom.GetDocumentParams{Depth: ptrTo[int64](0)})
	if err != nil {
		return nil, err
	}
	res, err := chromedp.Call(ctx, accessibility.QueryAXTree, accessibility.QueryAXTreeParams{NodeID: doc.Root.NodeID, Role: role, AccessibleName: name})
	if err != nil {
		return nil, err
	}
	var out []axNode
	for _, n := range res.Nodes {
		if n.Ignored || n.BackendDOMNodeID == 0 {
			continue
		}
		props := map[string]jsontext.Value{}
		for _, p := range n.Properties {
			if p.Value != nil {
				props[string(p.Name)] = p.Value.Value
			}
		}
		out = append(out, axNode{backend: n.BackendDOMNodeID, props: props})
	}
	return out, nil
}

// waitAX waits until exactly one exposed element has this role and name, and returns it.
func (tb *tab) waitAX(role, name string) axNode {
	tb.t.Helper()
	var last []axNode
	var lastErr error
	ok := tb.poll(func(ctx context.Context) bool {
		last, lastErr = tb.findAX(ctx, role, name)
		return lastErr == nil && len(last) == 1
	})
	if !ok {
		tb.t.Fatalf("no single %s %q within %s (found %d, err %v)", role, name, browserWait, len(last), lastErr)
	}
	return last[0]
}

// waitNoAX waits until no exposed element has this role and name.
func (tb *tab) waitNoAX(role, name string) {
	tb.t.Helper()
	if !tb.poll(func(ctx context.Context) bool {
		n, err := tb.findAX(ctx, role, name)
		return err == nil && len(n) == 0
	}) {
		tb.t.Fatalf("%s %q still shown after %s", role, name, browserWait)
	}
}

// poll checks cond every 20 ms until it holds or browserWait passes.
func (tb *tab) poll(cond func(ctx context.Context) bool) bool {
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond(ctx) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// call runs fn (a JavaScript function declaration) with the element as this.
func (tb *tab) call(n axNode, fn string, out any) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	if err := tb.callCtx(ctx, n, fn, out); err != nil {
		tb.t.Fatal(err)
	}
}

func (tb *tab) callCtx(ctx context.Context, n axNode, fn string, out any) error {
	obj, err := chromedp.Call(ctx, dom.ResolveNode, dom.ResolveNodeParams{BackendNodeID: n.backend})
	if err != nil {
		return err
	}
	res, err := chromedp.Call(ctx, runtime.CallFunctionOn, runtime.CallFunctionOnParams{
		FunctionDeclaration: fn, ObjectID: obj.Object.ObjectID, ReturnByValue: ptrTo(true), AwaitPromise: ptrTo(true)})
	if err != nil {
		return err
	}
	if res.ExceptionDetails != nil {
		return fmt.Errorf("%s: %s", fn, exceptionText(res.ExceptionDetails))
	}
	if out != nil {
		return json.Unmarshal(res.Result.Value, out)
	}
	return nil
}

// click clicks the element's centre with the mouse, as a person would: it fails if anything
// of the page covers it.
func (tb *tab) click(role, name string) {
	tb.t.Helper()
	n := tb.waitAX(role, name)
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	box, err := chromedp.Call(ctx, dom.GetBoxModel, dom.GetBoxModelParams{BackendNodeID: n.backend})
	if err != nil {
		tb.t.Fatalf("box of %s %q: %v", role, name, err)
	}
	q := box.Model.Content
	x, y := (q[0]+q[2]+q[4]+q[6])/4, (q[1]+q[3]+q[5]+q[7])/4
	var onTop bool
	tb.call(n, fmt.Sprintf(`function(){const r=this.getRootNode();const e=(r.elementFromPoint?r:document).elementFromPoint(%f,%f);return e===this||this.contains(e)}`, x, y), &onTop)
	if !onTop {
		tb.t.Fatalf("%s %q is covered at its centre", role, name)
	}
	tb.do(chromedp.MouseClickXY(x, y))
}

// typeInto focuses the element and types text as keyboard input.
func (tb *tab) typeInto(role, name, text string) {
	tb.t.Helper()
	n := tb.waitAX(role, name)
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	if _, err := chromedp.Call(ctx, dom.Focus, dom.FocusParams{BackendNodeID: n.backend}); err != nil {
		tb.t.Fatal(err)
	}
	tb.do(chromedp.KeyEvent(text))
}

// paste focuses the element and inserts text at once, as a paste or an input method does.
func (tb *tab) paste(role, name, text string) {
	tb.t.Helper()
	n := tb.waitAX(role, name)
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	if _, err := chromedp.Call(ctx, dom.Focus, dom.FocusParams{BackendNodeID: n.backend}); err != nil {
		tb.t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, input.InsertText, input.InsertTextParams{Text: text}); err != nil {
		tb.t.Fatal(err)
	}
}

func (tb *tab) press(key string) { tb.t.Helper(); tb.do(chromedp.KeyEvent(key)) }

// pressEnter sends Enter as a keyboard does: one keydown that carries the text, so a handler
// that prevents its default also prevents the new line.
func (tb *tab) pressEnter() {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeKeyDown, input.DispatchKeyEventTypeKeyUp} {
		p := input.DispatchKeyEventParams{Type: typ, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13}
		if typ == input.DispatchKeyEventTypeKeyDown {
			p.Text, p.UnmodifiedText = "\r", "\r"
		}
		if _, err := chromedp.Call(ctx, input.DispatchKeyEvent, p); err != nil {
			tb.t.Fatal(err)
		}
	}
}

// focused reports whether the element with this role and name has the keyboard focus.
func (tb *tab) focused(role, name string) bool {
	tb.t.Helper()
	return tb.poll(func(ctx context.Context) bool {
		n, err := tb.findAX(ctx, role, name)
		return err == nil && len(n) == 1 && string(n[0].props["focused"]) == "true"
	})
}

// waitLog waits until the log's entries satisfy cond and returns them.
func (tb *tab) waitLog(what string, cond func(items []string) bool) []string {
	tb.t.Helper()
	var items []string
	log := tb.waitAX("log", "Messages")
	if !tb.poll(func(ctx context.Context) bool {
		var now []string
		if tb.callCtx(ctx, log, `function(){return Array.from(this.children).map(e=>e.textContent)}`, &now) != nil {
			return false
		}
		items = now
		return cond(items)
	}) {
		tb.t.Fatalf("the log never showed %s; it holds %q", what, items)
	}
	return items
}

func (tb *tab) screenshot(dir, name string) string {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		tb.t.Fatal(err)
	}
	path := dir + "/" + name + ".png"
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.t.Fatal(err)
	}
	return path
}

// setOffline cuts the tab off the network (or restores it): requests fail, and the page sees
// navigator.onLine and the offline/online events as on a real loss.
func (tb *tab) setOffline(off bool) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	conds := []*network.Conditions{{Offline: off, DownloadThroughput: -1, UploadThroughput: -1}}
	if _, err := chromedp.Call(ctx, network.EmulateNetworkConditionsByRule, network.EmulateNetworkConditionsByRuleParams{MatchedNetworkConditions: conds}); err != nil {
		tb.t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, network.OverrideNetworkState, network.OverrideNetworkStateParams{Offline: off, DownloadThroughput: -1, UploadThroughput: -1}); err != nil {
		tb.t.Fatal(err)
	}
}

func countOf(items []string, s string) int {
	n := 0
	for _, it := range items {
		if strings.Contains(it, s) {
			n++
		}
	}
	return n
}

func exceptionText(d *runtime.ExceptionDetails) string {
	if d.Exception != nil && d.Exception.Description != "" {
		return d.Exception.Description
	}
	return d.Text
}
