package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"math"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/awardee/awardee/engine"
	json "github.com/go-json-experiment/json"
	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"
)

// sessionCookie holds a dashboard session's secret; the database keeps only its hash.
const sessionCookie = "awardee_session"

// checkCSRF refuses a cookie request that changes something unless it carries the session's
// CSRF token and does not come from another site. SameSite=Strict already keeps the cookie off
// cross-site requests in current browsers; the token and the fetch metadata cover older ones and
// same-site subdomains.
func checkCSRF(ctx *fasthttp.RequestCtx, session *engine.Session) error {
	if ctx.IsGet() || ctx.IsHead() {
		return nil
	}
	if err := checkSameOrigin(ctx); err != nil {
		return err
	}
	token := ctx.Request.Header.Peek("X-CSRF-Token")
	if subtle.ConstantTimeCompare(token, []byte(session.CSRFToken)) != 1 {
		return engine.Errorf(engine.CodeForbidden, "a request with the session cookie that changes anything needs the X-CSRF-Token header of the session")
	}
	return nil
}

// checkSameOrigin refuses a request a browser marks as coming from another site or origin.
func checkSameOrigin(ctx *fasthttp.RequestCtx) error {
	if site := ctx.Request.Header.Peek("Sec-Fetch-Site"); len(site) > 0 && !bytes.Equal(site, []byte("same-origin")) && !bytes.Equal(site, []byte("none")) {
		return engine.Errorf(engine.CodeForbidden, "requests with the session cookie must come from the dashboard's own origin")
	}
	if origin := ctx.Request.Header.Peek("Origin"); len(origin) > 0 {
		u, err := url.Parse(string(origin))
		if err != nil || !strings.EqualFold(u.Host, string(ctx.Host())) {
			return engine.Errorf(engine.CodeForbidden, "requests with the session cookie must come from the dashboard's own origin")
		}
	}
	return nil
}

// setSessionCookie sets (or, with an empty secret, clears) the session cookie.
func (s *server) setSessionCookie(ctx *fasthttp.RequestCtx, secret string) {
	c := fasthttp.AcquireCookie()
	defer fasthttp.ReleaseCookie(c)
	c.SetKey(sessionCookie)
	c.SetValue(secret)
	c.SetPath("/")
	c.SetHTTPOnly(true)
	c.SetSameSite(fasthttp.CookieSameSiteStrictMode)
	c.SetSecure(ctx.IsTLS() || strings.HasPrefix(s.cfg.PublicURL, "https://"))
	if secret == "" {
		c.SetMaxAge(-1)
	} else {
		// The browser may keep it as long as the session can live; the server ends it sooner
		// when it sits idle.
		c.SetMaxAge(int(engine.SessionMaxAge / time.Second))
	}
	ctx.Response.Header.SetCookie(c)
}

// signIn serves POST /session. It runs outside the API route's steps: there is no principal
// yet, and its own throttle takes the rate limit's place.
func (s *server) signIn(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	defer s.metrics.observe("/session", ctx, start)
	setRequestID(ctx)
	ctx.Response.Header.Set("Cache-Control", "no-store")
	if err := checkSameOrigin(ctx); err != nil {
		s.writeError(ctx, err)
		return
	}
	var body struct {
		Email    string `json:"email"`
		Password string `json:"password"`
	}
	if err := decodeJSON(ctx.PostBody(), &body, false); err != nil {
		s.writeError(ctx, err)
		return
	}
	client := ctx.RemoteIP().String()
	if wait := s.signIns.wait(body.Email, client); wait > 0 {
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(wait))
		s.writeError(ctx, engine.Errorf(engine.CodeRateLimited, "too many failed sign-ins; try again in %d s", wait))
		return
	}
	secret, session, err := s.db.SignIn(context.WithoutCancel(ctx), body.Email, body.Password)
	if err != nil {
		if ee, ok := errors.AsType[*engine.Error](err); ok && ee.Code == engine.CodeUnauthorized {
			s.signIns.failed(body.Email, client)
		}
		s.writeError(ctx, err)
		return
	}
	body2, err := json.Marshal(session)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	s.setSessionCookie(ctx, secret)
	writeJSON(ctx, fasthttp.StatusOK, body2)
}

func (s *server) getSession(c *call) (any, error) { return c.session, nil }

func (s *server) signOut(c *call) (any, error) {
	if err := s.db.SignOut(c.engineCtx, c.orgID(), c.sessionSecret); err != nil {
		return nil, err
	}
	s.setSessionCookie(c.ctx, "")
	sessionID := c.who.KeyID
	s.hub.Disconnect(c.orgID(), func(p engine.Principal) bool { return p.KeyID == sessionID })
	return map[string]bool{"signed_out": true}, nil
}

func (s *server) changePassword(c *call) (any, error) {
	var body struct {
		Current string `json:"current"`
		New     string `json:"new"`
	}
	if err := decodeJSON(c.ctx.PostBody(), &body, false); err != nil {
		return nil, err
	}
	if err := s.db.ChangePassword(c.engineCtx, c.sessionSecret, body.Current, body.New); err != nil {
		return nil, err
	}
	member, sessionID := c.who.MemberID, c.who.KeyID
	s.hub.Disconnect(c.orgID(), func(p engine.Principal) bool { return p.MemberID == member && p.KeyID != sessionID })
	return map[string]bool{"changed": true}, nil
}

func (s *server) realtimeToken(c *call) (any, error) {
	token, expires := s.db.IssueRealtimeToken(c.who)
	return map[string]any{"token": token, "expires_at": expires}, nil
}

// Sign-in throttle: each email and each client address may fail signInBurst times in a row,
// then one more attempt per signInEvery. A client address gets more room, as an office behind
// one address signs in many people.
const (
	signInBurst        = 5
	signInEvery        = 30 * time.Second
	signInAddressBurst = 20
	signInAddressEvery = 5 * time.Second
	signInTracked      = 100_000 // emails and addresses remembered at most; over it, forgotten
)

type signInThrottle struct {
	mu      sync.Mutex
	buckets map[string]*rate.Limiter
}

func newSignInThrottle() *signInThrottle {
	return &signInThrottle{buckets: make(map[string]*rate.Limiter)}
}

func (t *signInThrottle) limiters(email, client string) [2]*rate.Limiter {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.buckets) >= signInTracked {
		// Forget the buckets that have refilled first: a full bucket is what a new one would be,
		// so dropping it changes no answer, and a spray of made-up emails cannot wipe the
		// throttle of the one being guessed. Only if every bucket is still draining is all
		// forgotten, so memory stays bounded either way.
		now := time.Now()
		for k, l := range t.buckets {
			if l.TokensAt(now) >= float64(l.Burst()) {
				delete(t.buckets, k)
			}
		}
		if len(t.buckets) >= signInTracked {
			clear(t.buckets)
		}
	}
	get := func(key string, every time.Duration, burst int) *rate.Limiter {
		l := t.buckets[key]
		if l == nil {
			l = rate.NewLimiter(rate.Every(every), burst)
			t.buckets[key] = l
		}
		return l
	}
	return [2]*rate.Limiter{
		get("email\x00"+strings.ToLower(strings.TrimSpace(email)), signInEvery, signInBurst),
		get("addr\x00"+client, signInAddressEvery, signInAddressBurst),
	}
}

// wait is how many whole seconds to wait before trying again, 0 when an attempt may go ahead.
func (t *signInThrottle) wait(email, client string) int {
	now := time.Now()
	longest := 0.0
	for _, l := range t.limiters(email, client) {
		if tokens := l.TokensAt(now); tokens < 1 {
			longest = math.Max(longest, (1-tokens)/float64(l.Limit()))
		}
	}
	if longest == 0 {
		return 0
	}
	return max(1, int(math.Ceil(longest)))
}

func (t *signInThrottle) failed(email, client string) {
	now := time.Now()
	for _, l := range t.limiters(email, client) {
		l.AllowN(now, 1)
	}
}

// closeEndedSessions closes the WebSockets of sessions a sweep deleted, one pass over the hub's
// connections per org.
func (s *server) closeEndedSessions(ended []engine.EndedSession) {
	byOrg := make(map[string]map[string]bool)
	for _, e := range ended {
		if byOrg[e.OrgID] == nil {
			byOrg[e.OrgID] = make(map[string]bool)
		}
		byOrg[e.OrgID][e.ID] = true
	}
	for org, ids := range byOrg {
		s.hub.Disconnect(org, func(p engine.Principal) bool { return p.Kind == engine.KeyMember && ids[p.KeyID] })
	}
}
