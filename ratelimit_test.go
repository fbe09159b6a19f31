package main

import (
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
)

var (
	policyHeader = regexp.MustCompile(`^"(org|widget|visitor)";q=(\d+);w=(\d+)$`)
	limitHeader  = regexp.MustCompile(`^"(org|widget|visitor)";r=(\d+);t=(\d+)$`)
)

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

	// After waiting Retry-After seconds, the next request goes through.
	until := time.Now().Add(time.Duration(retry) * time.Second)
	testkit.WaitFor(t, "Retry-After to pass", func() bool { return time.Now().After(until) })
	mustStatus(t, ts.do(t, "POST", "/conversations", org.APIKey, `{}`), 201)
}

func TestRateWindowIsSharedByAnOrgsKeys(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0.5, 2)
	second, err := ts.db.CreateAPIKey(t.Context(), org.OrgID, "second")
	if err != nil {
		t.Fatal(err)
	}
	mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/conversations", second.APIKey, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 429)
	r := mustStatus(t, ts.do(t, "GET", "/conversations", second.APIKey, nil), 429)
	// One token every 2 s: 2, or 1 if the requests above took over a second.
	if retry, _ := strconv.Atoi(r.Header.Get("Retry-After")); retry < 1 || retry > 2 {
		t.Fatalf("Retry-After %s, want 1 or 2", r.Header.Get("Retry-After"))
	}
}

// TestNoisyVisitorCannotStarveTheTeam: visitor tokens spend their conversation's own bucket.
func TestNoisyVisitorCannotStarveTheTeam(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 1, 3)
	convID, token := ts.newConversation(t, org.APIKey, engine.StatusOpen) // spends 1 of the org's 3
	path := "/widget/conversations/" + convID
	refused := false
	for range visitorBurst + 1 {
		r := ts.do(t, "GET", path, token, nil)
		if r.Status == 429 {
			refused = true
			if name, _, _, _, _ := rateHeaders(t, r); name != "visitor" {
				t.Fatalf("visitor refused under policy %q", name)
			}
			break
		}
		mustStatus(t, r, 200)
	}
	if !refused {
		t.Fatalf("a visitor made %d requests at once without a 429", visitorBurst+1)
	}
	r := mustStatus(t, ts.do(t, "GET", "/conversations/"+convID, org.APIKey, nil), 200)
	if _, _, _, remaining, _ := rateHeaders(t, r); remaining != 1 {
		t.Fatalf("the team's window has %d left, want 1: the visitor spent it", remaining)
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
	orgs := []testOrg{ts.newOrg(t, 100, 10), ts.newOrg(t, 100, 10)}
	spent := time.Now() // before the requests: later, slow requests could have refilled the buckets
	for _, org := range orgs {
		mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 200)
	}
	if n := ts.limits.dropFull(spent); n != 0 {
		t.Fatalf("dropped %d buckets that were just spent", n)
	}
	if n := ts.limits.dropFull(time.Now().Add(time.Second)); n != len(orgs) {
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
	org := ts.newOrg(t, 1, 2)
	for i, want := range []int{403, 403, 429} {
		r := mustStatus(t, ts.do(t, "GET", "/conversations", org.WidgetKey, nil), want)
		if name, _, _, remaining, _ := rateHeaders(t, r); name != "widget" || (i == 0 && remaining != 1) {
			t.Fatalf("request %d: policy %q, %d left", i+1, name, remaining)
		}
	}
}
