package main

import (
	"context"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"
)

// Visitor windows: one bucket per conversation, so a noisy visitor cannot spend the team's window.
// People type slowly; this leaves room for a burst of retries and reconnects.
const (
	visitorRate  = 5
	visitorBurst = 20
)

// limiter keeps one token bucket per org for API keys ("org"), one per org for all of its
// visitor traffic together ("widget": the widget key opening conversations and every visitor
// token), and one per conversation for its visitor token ("visitor"). A visitor token's request
// spends both its conversation's bucket and the org's widget bucket, so opening more
// conversations never buys more than the org's window.
type limiter struct {
	db *engine.DB

	mu      sync.Mutex
	now     func() time.Time // the clock; guarded by mu so a test can set it on a running server
	buckets map[bucketKey]*bucket
}

// bucketKey names a bucket by its policy and the org or conversation it meters; a struct rather
// than a joined string, so that finding a request's bucket builds nothing.
type bucketKey struct {
	policy string
	id     string
}

type bucket struct {
	name  string // the policy name shown in the RateLimit headers
	lim   *rate.Limiter
	burst int
	// policyHeader is the RateLimit-Policy value, fixed for the bucket's life: built once, not
	// for every request it answers.
	policyHeader []byte
}

func newLimiter(db *engine.DB) *limiter {
	return &limiter{db: db, now: time.Now, buckets: make(map[bucketKey]*bucket)}
}

// spent is the buckets one request spends, at most two, held by value so that finding them
// allocates nothing.
type spent struct {
	all [2]*bucket
	n   int
}

func (s *spent) list() []*bucket { return s.all[:s.n] }

// bucketsFor fills out with the buckets a request of who spends, in the order they are spent,
// and returns the time to spend them at.
func (l *limiter) bucketsFor(who engine.Principal, out *spent) (time.Time, error) {
	l.mu.Lock()
	now := l.now()
	l.mu.Unlock()
	if who.Kind != engine.KeyVisitor && who.Kind != engine.KeyWidget {
		team, err := l.orgBucket("org", who.OrgID)
		out.all[0], out.n = team, 1
		return now, err
	}
	widget, err := l.orgBucket("widget", who.OrgID)
	if err != nil || who.Kind == engine.KeyWidget {
		out.all[0], out.n = widget, 1
		return now, err
	}
	key := bucketKey{"visitor", who.ConversationID}
	visitor := l.lookup(key)
	if visitor == nil {
		visitor = l.store(key, newBucket("visitor", visitorRate, visitorBurst))
	}
	// The conversation's own bucket first: a visitor over its own window is refused without
	// touching the org's.
	out.all, out.n = [2]*bucket{visitor, widget}, 2
	return now, nil
}

// orgBucket returns the org's bucket of policy name, made from the org's window when there is none.
func (l *limiter) orgBucket(name, orgID string) (*bucket, error) {
	key := bucketKey{name, orgID}
	if b := l.lookup(key); b != nil {
		return b, nil
	}
	org, err := l.db.Org(orgID)
	if err != nil {
		return nil, err
	}
	return l.store(key, newBucket(name, org.Rate, org.Burst)), nil
}

func (l *limiter) lookup(key bucketKey) *bucket {
	l.mu.Lock()
	b := l.buckets[key]
	l.mu.Unlock()
	return b
}

// store keeps b under key unless a concurrent request stored one first, and returns the one kept.
func (l *limiter) store(key bucketKey, b *bucket) *bucket {
	l.mu.Lock()
	defer l.mu.Unlock()
	if existing, ok := l.buckets[key]; ok {
		return existing
	}
	l.buckets[key] = b
	return b
}

// newBucket clamps the window to the contract's bounds, so that a window stored before they
// were enforced still gives finite, whole-second headers.
func newBucket(name string, perSecond float64, burst int) *bucket {
	if !(perSecond >= engine.MinRate) { // NaN included
		perSecond = engine.MinRate
	}
	perSecond = min(perSecond, engine.MaxRate)
	burst = max(1, min(burst, engine.MaxBurst))
	b := &bucket{name: name, lim: rate.NewLimiter(rate.Limit(perSecond), burst), burst: burst}
	policy := strconv.AppendQuote(nil, name)
	policy = append(policy, ";q="...)
	policy = strconv.AppendInt(policy, int64(burst), 10)
	policy = append(policy, ";w="...)
	b.policyHeader = strconv.AppendInt(policy, int64(wholeSeconds(float64(burst)/perSecond)), 10)
	return b
}

// allow takes one token from every bucket the request spends, or refuses it with 429; either way
// it sets the RateLimit headers. A refused request costs nothing in any bucket. The last bucket
// (the shared one: the org's, or its widget bucket) is only spent when it has a token, so a
// flood's refusals never touch it; a bucket before it (a conversation's, which only its own
// visitor spends) is reserved first, and the reservation is cancelled if a later one refuses.
// Cancelling is exact only when no other request reserved in between (x/time/rate keeps what
// was reserved after it), which is why the shared bucket is never the one cancelled.
func (l *limiter) allow(ctx *fasthttp.RequestCtx, who engine.Principal) error {
	var spends spent
	now, err := l.bucketsFor(who, &spends)
	if err != nil {
		return err
	}
	buckets := spends.list()
	last := len(buckets) - 1
	var reservedAt [1]*rate.Reservation // every bucket but the last, of which there is at most one
	reserved := reservedAt[:0]
	var refusedBy *bucket
	for _, b := range buckets[:last] {
		if b.lim.TokensAt(now) < 1 {
			refusedBy = b
			break
		}
		// Always OK: every bucket has a burst of at least 1. A delay means a concurrent request
		// took the last token since the check above.
		r := b.lim.ReserveN(now, 1)
		if r.DelayFrom(now) > 0 {
			r.CancelAt(now)
			refusedBy = b
			break
		}
		reserved = append(reserved, r)
	}
	if refusedBy == nil && !buckets[last].lim.AllowN(now, 1) {
		refusedBy = buckets[last]
	}
	if refusedBy == nil {
		tightest(buckets, now).setHeaders(ctx, now)
		return nil
	}
	for _, r := range reserved {
		r.CancelAt(now)
	}
	refusedBy.setHeaders(ctx, now)
	retry := wholeSeconds(refusedBy.untilNextToken(now))
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(retry))
	return engine.Errorf(engine.CodeRateLimited, "the %s rate window is exhausted; retry after %d s", refusedBy.name, retry).
		WithDetails(map[string]any{"retry_after": retry})
}

// untilNextToken is the seconds until b holds a whole token again.
func (b *bucket) untilNextToken(now time.Time) float64 {
	return (1 - b.lim.TokensAt(now)) / float64(b.lim.Limit())
}

// tightest is the bucket that will refuse first: the fewest whole tokens left, and of those the
// slowest to earn the next one. When two policies apply, the headers describe this one.
func tightest(buckets []*bucket, now time.Time) *bucket {
	best := buckets[0]
	bestLeft := math.Floor(best.lim.TokensAt(now))
	for _, b := range buckets[1:] {
		left := math.Floor(b.lim.TokensAt(now))
		if left < bestLeft || (left == bestLeft && b.lim.Limit() < best.lim.Limit()) {
			best, bestLeft = b, left
		}
	}
	return best
}

// setHeaders writes draft-ietf-httpapi-ratelimit-headers-10: the policy's quota is the burst over
// the seconds a full refill takes; t is the seconds until the bucket is full again.
func (b *bucket) setHeaders(ctx *fasthttp.RequestCtx, now time.Time) {
	perSecond := float64(b.lim.Limit())
	tokens := b.lim.TokensAt(now)
	remaining := max(0, int(math.Floor(tokens)))
	reset := 0
	if missing := float64(b.burst) - tokens; missing > 0 {
		reset = wholeSeconds(missing / perSecond)
	}
	ctx.Response.Header.SetBytesV("RateLimit-Policy", b.policyHeader)
	// Built on the stack: every answer carries it, and the header copies it.
	var buf [64]byte
	v := strconv.AppendQuote(buf[:0], b.name)
	v = append(v, ";r="...)
	v = strconv.AppendInt(v, int64(remaining), 10)
	v = append(v, ";t="...)
	v = strconv.AppendInt(v, int64(reset), 10)
	ctx.Response.Header.SetBytesV("RateLimit", v)
}

// wholeSeconds rounds a positive number of seconds up to at least 1. The bounds of an org's
// window keep every result of the limiter's arithmetic far below the cap (at most
// MaxBurst/MinRate = 10^8 s); the cap only keeps the conversion to int defined for any input.
func wholeSeconds(s float64) int {
	const ceiling = math.MaxInt32
	if !(s < ceiling) { // NaN and +Inf included
		return ceiling
	}
	return max(1, int(math.Ceil(s)))
}

// forgetIdle drops buckets that are full again every interval until ctx ends: a full bucket is
// exactly what a new one would be, so dropping it changes no answer and bounds memory by the
// number of recently active orgs and visitors.
func (l *limiter) forgetIdle(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.mu.Lock()
			now := l.now()
			l.mu.Unlock()
			l.dropFull(now)
		}
	}
}

func (l *limiter) dropFull(now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for k, b := range l.buckets {
		if b.lim.TokensAt(now) >= float64(b.burst) {
			delete(l.buckets, k)
			n++
		}
	}
	return n
}
