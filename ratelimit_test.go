package main

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
)

var (
	policyHeader = regexp.MustCompile(`^"(org|widget|visitor)";q=(\d+);w=(\d+)$`)
	limitHeader  = regexp.MustCompile(`^"(org|widget|visitor)";r=(\d+);t=(\d+)$`)
)

// testClock is a clock that moves only when the test says so, so refill can be tested exactly
// and without waiting.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// stopLimiterClock makes ts's rate limiter read a clock that stands still until advanced.
func stopLimiterClock(ts *testServer) *testClock {
	clock := &testClock{now: time.Now()}
	ts.limits.mu.Lock()
	ts.limits.now = clock.Now
	ts.limits.mu.Unlock()
	return clock
}

// rateHeaders parses the draft-10 headers of r and fails the test if either is malformed.
func rateHeaders(t *testing.T, r resp) (policy string, quota, window, remaining, reset int) {
	t.Helper()
	p := policyHeader.FindStringSubmatch(r.Header.Get("RateLimit-Policy"))
	l := limitHeader.FindStringSubmatch(r.Header.Get("RateLimit"))
	if p == nil || l == nil || p[1] != l[1] {
		t.Fatalf("malformed rate headers: RateLimit-Policy %q, RateLimit %q", r.Header.Get("RateLimit-Policy"), r.Header.Get("RateLimit"))
	}
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	return p[1], atoi(p[2]), atoi(p[3]), atoi(l[2]), atoi(l[3])
}

func TestOrgRateWindow(t *testing.T) {
	ts := newTestServer(t)
	clock := stopLimiterClock(ts)
	const burst = 4
	org := ts.newOrg(t, 2, burst) // a token every 500 ms
	other := ts.newOrg(t, 2, burst)

	for i := range burst {
		r := mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 200)
		name, quota, window, remaining, _ := rateHeaders(t, r)
		if name != "org" || quota != burst || window != 2 || remaining != burst-1-i {
			t.Fatalf("request %d: policy %s q=%d w=%d r=%d", i+1, name, quota, window, remaining)
		}
	}
	convsBefore, _ := ts.db.CountByStatus()
	commitsBefore := ts.db.CommitStats()
	refused := mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, `{}`), 429)
	if refused.ErrorCode(t) != engine.CodeRateLimited {
		t.Fatalf("429 body %s", refused.Body)
	}
	retry, err := strconv.Atoi(refused.Header.Get("Retry-After"))
	if err != nil || retry != 1 {
		t.Fatalf("Retry-After %q, want 1 (a token is free within 500 ms, rounded up)", refused.Header.Get("Retry-After"))
	}
	if _, _, _, remaining, _ := rateHeaders(t, refused); remaining != 0 {
		t.Fatalf("429 says %d remaining", remaining)
	}
	if after := ts.db.CommitStats(); after != commitsBefore {
		t.Fatalf("a refused request reached the commit loop: %+v → %+v", commitsBefore, after)
	}
	if convsAfter, _ := ts.db.CountByStatus(); convsAfter[engine.StatusOpen] != convsBefore[engine.StatusOpen] {
		t.Fatal("a refused request created a conversation")
	}
	// Another org's window is its own.
	mustStatus(t, ts.do(t, "GET", "/conversations", other.APIKey, nil), 200)

	// Just before the token is free the request is still refused; once Retry-After has passed
	// it goes through.
	clock.Advance(499 * time.Millisecond)
	mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, `{}`), 429)
	clock.Advance(time.Duration(retry)*time.Second - 499*time.Millisecond)
	mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, `{}`), 201)
}

func TestRateWindowIsSharedByAnOrgsKeys(t *testing.T) {
	ts := newTestServer(t)
	stopLimiterClock(ts)
	org := ts.newOrg(t, 0.5, 2)
	second, err := ts.db.CreateAPIKey(t.Context(), org.OrgID, "second")
	if err != nil {
		t.Fatal(err)
	}
	mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/conversations", second.APIKey, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 429)
	r := mustStatus(t, ts.do(t, "GET", "/conversations", second.APIKey, nil), 429)
	// One token every 2 s, and the clock stands still.
	if retry := r.Header.Get("Retry-After"); retry != "2" {
		t.Fatalf("Retry-After %s, want 2", retry)
	}
}

// TestNoisyVisitorCannotStarveTheTeam: visitor tokens spend their conversation's own bucket (and
// the org's widget bucket), never the team's.
func TestNoisyVisitorCannotStarveTheTeam(t *testing.T) {
	ts := newTestServer(t)
	stopLimiterClock(ts)
	org := ts.newOrg(t, 1, 2*visitorBurst)
	convID, token := ts.newConversation(t, org.APIKey, engine.StatusOpen) // spends 1 of the team's
	path := "/widget/conversations/" + convID
	for range visitorBurst {
		mustStatus(t, ts.do(t, "GET", path, token, nil), 200)
	}
	r := mustStatus(t, ts.do(t, "GET", path, token, nil), 429)
	if name, _, _, _, _ := rateHeaders(t, r); name != "visitor" {
		t.Fatalf("visitor refused under policy %q", name)
	}
	r = mustStatus(t, ts.do(t, "GET", "/conversations/"+convID, org.APIKey, nil), 200)
	if name, _, _, remaining, _ := rateHeaders(t, r); name != "org" || remaining != 2*visitorBurst-2 {
		t.Fatalf("the team's window %q has %d left, want %d: the visitor spent it", name, remaining, 2*visitorBurst-2)
	}
}

func TestRateHeadersOnEveryAuthenticatedResponse(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	for _, r := range []resp{
		ts.do(t, "GET", "/conversations", org.APIKey, nil),
		ts.do(t, "GET", "/conversations/conv_bad", org.APIKey, nil),
		ts.do(t, "POST", "/conversations", org.APIKey, `{"status":"nope"}`),
		ts.do(t, "POST", "/widget/conversations", org.WidgetKey, nil),
	} {
		rateHeaders(t, r)
	}
	if r := ts.do(t, "GET", "/conversations", "", nil); r.Header.Get("RateLimit") != "" {
		t.Fatal("an unauthenticated response carries rate headers")
	}
}

func TestIdleBucketsAreDropped(t *testing.T) {
	ts := newTestServer(t)
	clock := stopLimiterClock(ts)
	orgs := []testOrg{ts.newOrg(t, 100, 10), ts.newOrg(t, 100, 10)}
	for _, org := range orgs {
		mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 200)
	}
	if n := ts.limits.dropFull(clock.Now().Add(9 * time.Millisecond)); n != 0 {
		t.Fatalf("dropped %d buckets that are not full yet", n)
	}
	if n := ts.limits.dropFull(clock.Now().Add(10 * time.Millisecond)); n != len(orgs) {
		t.Fatalf("dropped %d buckets, want %d refilled ones", n, len(orgs))
	}
	ts.limits.mu.Lock()
	left := len(ts.limits.buckets)
	ts.limits.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d buckets kept", left)
	}
}

// TestWrongKindOfKeyIsMetered: the public widget key on a team endpoint gets 403, and pays a
// token for it like any known key.
func TestWrongKindOfKeyIsMetered(t *testing.T) {
	ts := newTestServer(t)
	stopLimiterClock(ts)
	org := ts.newOrg(t, 1, 2)
	for i, want := range []int{403, 403, 429} {
		r := mustStatus(t, ts.do(t, "GET", "/conversations", org.WidgetKey, nil), want)
		if name, _, _, remaining, _ := rateHeaders(t, r); name != "widget" || (i == 0 && remaining != 1) {
			t.Fatalf("request %d: policy %q, %d left", i+1, name, remaining)
		}
	}
}

// TestVisitorTrafficSpendsTheOrgsWidgetWindow: the widget key opening conversations and every
// visitor token spend one org-wide widget bucket as well as their own; a request refused by
// either bucket spends nothing from the other; and the headers describe the tighter policy, or
// the one that refused.
func TestVisitorTrafficSpendsTheOrgsWidgetWindow(t *testing.T) {
	ts := newTestServer(t)
	clock := stopLimiterClock(ts)
	const burst = 30 // the org's: more than a conversation's, so both can be the one that refuses
	org := ts.newOrg(t, 1, burst)
	openWidget := func(want int) (resp, engine.CreatedConversation) {
		t.Helper()
		r := mustStatus(t, ts.do(t, "POST", "/widget/conversations", org.WidgetKey, `{}`), want)
		var out engine.CreatedConversation
		if want == 201 {
			if err := json.Unmarshal(r.Body, &out); err != nil {
				t.Fatal(err)
			}
		}
		return r, out
	}
	wantPolicy := func(r resp, policy string, left int) {
		t.Helper()
		if name, _, _, remaining, _ := rateHeaders(t, r); name != policy || remaining != left {
			t.Fatalf("headers describe %q with %d left, want %q with %d", name, remaining, policy, left)
		}
	}

	r, a := openWidget(201)
	wantPolicy(r, "widget", burst-1)
	pathA := "/widget/conversations/" + a.Conversation.ID
	for i := range visitorBurst {
		r := mustStatus(t, ts.do(t, "GET", pathA, a.VisitorToken, nil), 200)
		wantPolicy(r, "visitor", visitorBurst-1-i) // fewer left than the org's burst-2-i
	}
	// A's own window refuses; the widget bucket is not spent by those refusals.
	for range 5 {
		wantPolicy(mustStatus(t, ts.do(t, "GET", pathA, a.VisitorToken, nil), 429), "visitor", 0)
	}
	left := burst - 1 - visitorBurst
	var b engine.CreatedConversation
	for i := range left {
		r, b = openWidget(201)
		wantPolicy(r, "widget", left-1-i)
	}
	r, _ = openWidget(429)
	wantPolicy(r, "widget", 0)
	if r.Header.Get("Retry-After") != "1" {
		t.Fatalf("Retry-After %q, want 1", r.Header.Get("Retry-After"))
	}

	// The widget bucket refuses B, whose own bucket is full; those refusals must not spend it:
	// more of them than its burst, so an uncancelled reservation would leave it empty.
	pathB := "/widget/conversations/" + b.Conversation.ID
	for range visitorBurst + 5 {
		wantPolicy(mustStatus(t, ts.do(t, "GET", pathB, b.VisitorToken, nil), 429), "widget", 0)
	}
	clock.Advance(time.Second) // one widget token; B's bucket would only be back to 0 if spent
	wantPolicy(mustStatus(t, ts.do(t, "GET", pathB, b.VisitorToken, nil), 200), "widget", 0)
	wantPolicy(mustStatus(t, ts.do(t, "GET", pathB, b.VisitorToken, nil), 429), "widget", 0)
	clock.Advance(time.Second)
	r = mustStatus(t, ts.do(t, "GET", pathB, b.VisitorToken, nil), 200)
	wantPolicy(r, "widget", 0)

	// The team's window is its own.
	wantPolicy(mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 200), "org", burst-1)
}

// TestRateWindowEdges: the smallest rate and the largest burst the contract allows give finite
// whole-second headers, and the limiter clamps a window outside the bounds (one stored before
// they were enforced) into them.
func TestRateWindowEdges(t *testing.T) {
	ts := newTestServer(t)
	stopLimiterClock(ts)
	for _, c := range []struct {
		rate                  float64
		burst                 int
		window, first, refill int // w, then t after one request; refill is Retry-After once empty
	}{
		{engine.MinRate, engine.MaxBurst, 100_000_000, 100, 0},
		{engine.MinRate, 1, 100, 100, 100},
		{engine.MaxRate, engine.MaxBurst, 1, 1, 0},
		{engine.MaxRate, 1, 1, 1, 1},
	} {
		org := ts.newOrg(t, c.rate, c.burst)
		r := mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 200)
		_, quota, window, remaining, reset := rateHeaders(t, r)
		if quota != c.burst || window != c.window || remaining != c.burst-1 || reset != c.first {
			t.Errorf("rate %g burst %d: q=%d w=%d r=%d t=%d, want q=%d w=%d r=%d t=%d",
				c.rate, c.burst, quota, window, remaining, reset, c.burst, c.window, c.burst-1, c.first)
		}
		if c.burst == 1 {
			r := mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 429)
			if got := r.Header.Get("Retry-After"); got != strconv.Itoa(c.refill) {
				t.Errorf("rate %g burst 1: Retry-After %q, want %d", c.rate, got, c.refill)
			}
		}
	}

	for _, c := range []struct {
		rate             float64
		burst            int
		wantRate         float64
		wantBurst        int
		window, untilOne int
	}{
		{1e-300, 1 << 40, engine.MinRate, engine.MaxBurst, 100_000_000, 100},
		{math.NaN(), 0, engine.MinRate, 1, 100, 100},
		{math.Inf(1), -5, engine.MaxRate, 1, 1, 1},
	} {
		b := newBucket("org", c.rate, c.burst)
		if float64(b.lim.Limit()) != c.wantRate || b.burst != c.wantBurst || b.lim.Burst() != c.wantBurst {
			t.Errorf("window %g/%d became %g/%d", c.rate, c.burst, b.lim.Limit(), b.burst)
		}
		now := time.Now()
		b.lim.AllowN(now, c.wantBurst)
		if w := wholeSeconds(float64(b.burst) / float64(b.lim.Limit())); w != c.window {
			t.Errorf("window %g/%d: w=%d, want %d", c.rate, c.burst, w, c.window)
		}
		if s := wholeSeconds(b.untilNextToken(now)); s != c.untilOne {
			t.Errorf("window %g/%d: next token in %d s, want %d", c.rate, c.burst, s, c.untilOne)
		}
	}
	for _, s := range []float64{math.NaN(), math.Inf(1), 1e300} {
		if got := wholeSeconds(s); got != math.MaxInt32 {
			t.Errorf("wholeSeconds(%g) = %d, want the cap", s, got)
		}
	}
}

// TestOrgCommandsRefuseWindowsOutOfBounds: org create and org update refuse a window outside
// section 8's bounds, naming the flag, and change nothing.
func TestOrgCommandsRefuseWindowsOutOfBounds(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := run([]string{"org", "create", "--data", dir, "--name", "edges", "--rate", "0.01", "--burst", "1000000"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	var org engine.CreatedOrg
	if err := json.Unmarshal(out.Bytes(), &org); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"org", "create", "--name", "tiny", "--rate", "1e-300"}, "--rate"},
		{[]string{"org", "create", "--name", "nan", "--rate", "NaN"}, "--rate"},
		{[]string{"org", "create", "--name", "inf", "--rate", "+Inf"}, "--rate"},
		{[]string{"org", "create", "--name", "huge", "--burst", "1000001"}, "--burst"},
		{[]string{"org", "create", "--name", "none", "--burst", "0"}, "--burst"},
		{[]string{"org", "update", "--org", org.OrgID, "--rate", "0.0099"}, "--rate"},
		{[]string{"org", "update", "--org", org.OrgID, "--burst", "9223372036854775807"}, "--burst"},
		{[]string{"org", "update", "--org", org.OrgID, "--rate", "2", "--burst", "0"}, "--burst"},
	} {
		err := run(append(c.args, "--data", dir), io.Discard, io.Discard)
		if err == nil || !strings.HasPrefix(err.Error(), c.flag+": ") {
			t.Errorf("%v: %v, want an error naming %s", c.args, err, c.flag)
		}
	}
	db, err := engine.Open(dir, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	orgs, err := db.Orgs()
	if err != nil || len(orgs) != 1 || orgs[0].Rate != 0.01 || orgs[0].Burst != 1_000_000 {
		t.Fatalf("orgs after refused commands: %+v (%v)", orgs, err)
	}
}
