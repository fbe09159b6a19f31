package main

import (
	"context"
	"fmt"
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

// limiter keeps one token bucket per org for API keys, one per org for widget conversation
// creation, and one per conversation for visitor tokens.
type limiter struct {
	db      *engine.DB
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	name  string // the policy name shown in the RateLimit headers
	lim   *rate.Limiter
	burst int
}

func newLimiter(db *engine.DB) *limiter {
	return &limiter{db: db, buckets: make(map[string]*bucket)}
}

func (l *limiter) bucketFor(who engine.Principal) (*bucket, error) {
	var key string
	switch who.Kind {
	case engine.KeyVisitor:
		key = "visitor/" + who.ConversationID
	case engine.KeyWidget:
		key = "widget/" + who.OrgID
	default:
		key = "org/" + who.OrgID
	}
	l.mu.Lock()
	b, ok := l.buckets[key]
	l.mu.Unlock()
	if ok {
		return b, nil
	}
	if who.Kind == engine.KeyVisitor {
		b = &bucket{name: "visitor", lim: rate.NewLimiter(visitorRate, visitorBurst), burst: visitorBurst}
	} else {
		org, err := l.db.Org(who.OrgID)
		if err != nil {
			return nil, err
		}
		b = &bucket{name: "org", lim: rate.NewLimiter(rate.Limit(org.Rate), org.Burst), burst: org.Burst}
		if who.Kind == engine.KeyWidget {
			b.name = "widget"
		}
	}
	l.mu.Lock()
	if existing, ok := l.buckets[key]; ok {
		b = existing
	} else {
		l.buckets[key] = b
	}
	l.mu.Unlock()
	return b, nil
}

// allow takes one token for the request or refuses it with 429; either way it sets the RateLimit
// headers. A refused request's reservation is cancelled, so it costs nothing.
func (l *limiter) allow(ctx *fasthttp.RequestCtx, who engine.Principal) error {
	b, err := l.bucketFor(who)
	if err != nil {
		return err
	}
	now := time.Now()
	r := b.lim.ReserveN(now, 1) // always OK: every bucket has a burst of at least 1
	wait := r.DelayFrom(now)
	if wait > 0 {
		r.CancelAt(now)
	}
	b.setHeaders(ctx, now)
	if wait > 0 {
		retry := max(1, int(math.Ceil(wait.Seconds())))
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(retry))
		return engine.Errorf(engine.CodeRateLimited, "the %s rate window is exhausted; retry after %d s", b.name, retry).
			WithDetails(map[string]any{"retry_after": retry})
	}
	return nil
}

// setHeaders writes draft-ietf-httpapi-ratelimit-headers-10: the policy's quota is the burst over
// the seconds a full refill takes; t is the seconds until the bucket is full again.
func (b *bucket) setHeaders(ctx *fasthttp.RequestCtx, now time.Time) {
	perSecond := float64(b.lim.Limit())
	window := max(1, int(math.Ceil(float64(b.burst)/perSecond)))
	tokens := b.lim.TokensAt(now)
	remaining := max(0, int(math.Floor(tokens)))
	reset := 0
	if missing := float64(b.burst) - tokens; missing > 0 {
		reset = int(math.Ceil(missing / perSecond))
	}
	ctx.Response.Header.Set("RateLimit-Policy", fmt.Sprintf("%q;q=%d;w=%d", b.name, b.burst, window))
	ctx.Response.Header.Set("RateLimit", fmt.Sprintf("%q;r=%d;t=%d", b.name, remaining, reset))
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
			l.dropFull(time.Now())
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
