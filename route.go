package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/awardee/awardee/engine"
	json "github.com/go-json-experiment/json"
	"github.com/oklog/ulid/v2"
	"github.com/valyala/fasthttp"
	"github.com/zeebo/blake3"
)

// call is one authenticated request as a handler sees it.
type call struct {
	ctx  *fasthttp.RequestCtx
	who  engine.Principal
	idem *engine.Idempotency // nil unless the request carries an Idempotency-Key
	// session is the signed-in member's session when the request came with the session cookie
	// (who is then of kind member), with the cookie's secret.
	session       *engine.Session
	sessionSecret string

	// engineCtx is the context of the engine calls a handler makes. It is not the request's:
	// fasthttp cancels that at shutdown, when a draining server must still finish the requests it
	// accepted, and its values read the pooled request, which goroutines an attachment fetch
	// leaves behind (net/http's dialers) could read after the request is reused.
	engineCtx context.Context
}

func (c *call) param(name string) string {
	v, _ := c.ctx.UserValue(name).(string)
	return v
}

// orgID is the org every lookup of this call is scoped to.
func (c *call) orgID() string { return c.who.OrgID }

// handler does a route's own work after the shared steps; it returns the success body (encoded as
// JSON with the route's status) or an error.
type handler func(c *call) (any, error)

// route wraps h in the steps every API request takes, in the contract's order: request id, auth,
// rate limit, idempotency (for POST and PATCH), then h; and metrics around all of it.
func (s *server) route(name string, need engine.KeyKind, okStatus int, h handler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		s.serveRoute(ctx, need, okStatus, h)
		s.metrics.observe(name, ctx, start)
	}
}

func (s *server) serveRoute(ctx *fasthttp.RequestCtx, need engine.KeyKind, okStatus int, h handler) {
	setRequestID(ctx)
	// API answers are per caller and some carry secrets (a visitor token, a replay of one): no
	// cache may keep any of them.
	ctx.Response.Header.Set("Cache-Control", "no-store")
	if need == engine.KeyWidget || need == engine.KeyVisitor {
		setCORS(ctx)
	}
	who, session, secret, err := s.authenticate(ctx)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	if session != nil {
		if err := checkCSRF(ctx, session); err != nil {
			s.writeError(ctx, err)
			return
		}
	}
	// Every known key spends a token before anything else is judged, a key of the wrong kind
	// included: the public widget key must not reach team endpoints unmetered.
	if err := s.limits.allow(ctx, who); err != nil {
		s.writeError(ctx, err)
		return
	}
	if err := checkKind(who, need); err != nil {
		s.writeError(ctx, err)
		return
	}
	c := &call{ctx: ctx, who: who, session: session, sessionSecret: secret, engineCtx: context.Background()}
	if !ctx.IsPost() && !ctx.IsPatch() {
		s.finish(c, okStatus, h)
		return
	}
	key := ctx.Request.Header.Peek("Idempotency-Key")
	if key == nil {
		s.finish(c, okStatus, h)
		return
	}
	if !validIdempotencyKey(key) {
		s.writeError(ctx, engine.Errorf(engine.CodeValidation, "Idempotency-Key must be 1 to 255 printable ASCII characters").
			WithDetails(map[string]any{"header": "Idempotency-Key"}))
		return
	}
	scopedKey := idempotencyScope(who) + string(key)
	scoped := who.OrgID + scopedKey
	if !s.inflight.acquire(scoped) {
		s.writeError(ctx, engine.Errorf(engine.CodeIdempotencyInUse, "a request with this Idempotency-Key is still in progress; retry after it finishes"))
		return
	}
	defer s.inflight.release(scoped)
	c.idem = &engine.Idempotency{Key: scopedKey, Fingerprint: fingerprint(ctx), Status: okStatus}
	rec, err := s.db.LookupIdempotency(who.OrgID, c.idem.Key, s.cfg.IdempotencyTTL)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	if rec != nil {
		if !rec.Matches(c.idem.Fingerprint) {
			s.writeError(ctx, engine.Errorf(engine.CodeIdempotencyMismatch, "this Idempotency-Key was used for a different request (method, path or body)"))
			return
		}
		ctx.Response.Header.Set("Idempotent-Replayed", "true")
		writeJSON(ctx, rec.Status, rec.Body)
		return
	}
	s.finish(c, okStatus, h)
}

// idempotencyScope narrows the org's key space for callers that are not the team. API keys share
// the org's scope, as section 7 says; a visitor token gets its own conversation's, so visitors
// can neither replay each other's answers nor block or poison the team's keys; the public widget
// key gets one of its own. The prefixes start with a byte no valid key contains, so no scope can
// name another's keys.
func idempotencyScope(who engine.Principal) string {
	switch who.Kind {
	case engine.KeyVisitor:
		return "\x00visitor\x00" + who.ConversationID + "\x00"
	case engine.KeyWidget:
		return "\x00widget\x00"
	}
	return ""
}

// finish runs the handler and answers. With an idempotency key, a 4xx outcome is stored here
// (a 2xx was stored by the engine with its effects; 409, 429 and 5xx are never stored).
func (s *server) finish(c *call, okStatus int, h handler) {
	result, err := h(c)
	if reply, ok := result.(encodedReply); ok && err == nil {
		writeJSON(c.ctx, okStatus, reply)
		return
	}
	if page, ok := result.(selfWriting); ok && err == nil {
		page.writeResponse(c.ctx, okStatus) // a list page, encoded under its bound (shed.go)
		return
	}
	if err == nil {
		// json/v2, as the engine encodes what it stores: a reply then has the same bytes keyed or not.
		body, mErr := json.Marshal(result)
		if mErr != nil {
			s.writeError(c.ctx, mErr)
			return
		}
		if c.idem != nil {
			// The writes of conversations, messages and webhooks store their outcome in their own
			// unit (encodedReply). The team-management writes (members, keys, sessions) store it
			// here, in a transaction of its own right after the effect: a crash between the two
			// lets a retry run again, which the README says.
			if sErr := s.db.SaveOutcome(context.Background(), c.orgID(), c.idem, okStatus, body); sErr != nil {
				s.log.Warn("idempotency outcome not stored", "request_id", requestID(c.ctx), "err", sErr)
			}
		}
		writeJSON(c.ctx, okStatus, body)
		return
	}
	status, body := renderError(err, s.log, requestID(c.ctx))
	if c.idem != nil && status >= 400 && status < 500 && status != fasthttp.StatusConflict && status != fasthttp.StatusTooManyRequests {
		if sErr := s.db.SaveOutcome(context.Background(), c.orgID(), c.idem, status, body); sErr != nil {
			// Not stored means a retry runs again, which is safe for an outcome with no effect.
			s.log.Warn("idempotency outcome not stored", "request_id", requestID(c.ctx), "err", sErr)
		}
	}
	writeJSON(c.ctx, status, body)
}

func (s *server) writeError(ctx *fasthttp.RequestCtx, err error) {
	setRequestID(ctx)
	status, body := renderError(err, s.log, requestID(ctx))
	writeJSON(ctx, status, body)
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, body []byte) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// setRequestID gives the response its X-Request-Id once; a ULID, so ids sort by time in logs.
func setRequestID(ctx *fasthttp.RequestCtx) {
	if len(ctx.Response.Header.Peek("X-Request-Id")) == 0 {
		// Built on the stack: every request has one, and the header copies it.
		var id [len("req_") + ulid.EncodedSize]byte
		copy(id[:], "req_")
		_ = ulid.Make().MarshalTextTo(id[len("req_"):]) // its one error is a buffer of another size
		ctx.Response.Header.SetBytesV("X-Request-Id", id[:])
	}
}

func requestID(ctx *fasthttp.RequestCtx) string {
	return string(ctx.Response.Header.Peek("X-Request-Id"))
}

func validIdempotencyKey(k []byte) bool {
	if len(k) == 0 || len(k) > 255 {
		return false
	}
	for _, b := range k {
		if b < 0x20 || b > 0x7e {
			return false
		}
	}
	return true
}

// fingerprint is BLAKE3 over method, path and the BLAKE3 of the body bytes, as section 7 defines.
// The path is the one the router matched, as sent: fasthttp's decoded Path would give
// /conversations/conv_%30… the fingerprint of the real conversation's path while the router
// answered it as another (missing) one.
func fingerprint(ctx *fasthttp.RequestCtx) [32]byte {
	bodyHash := blake3.Sum256(ctx.PostBody())
	h := blake3.New()
	h.Write(ctx.Method())
	h.Write([]byte{0})
	h.Write(ctx.Request.URI().PathOriginal())
	h.Write([]byte{0})
	h.Write(bodyHash[:])
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// authenticate finds the request's principal from its bearer secret or, without an
// Authorization header, from the dashboard's session cookie (session.go). The cookie is only ever
// a session: an API key in a cookie is not a key.
func (s *server) authenticate(ctx *fasthttp.RequestCtx) (engine.Principal, *engine.Session, string, error) {
	auth := ctx.Request.Header.Peek("Authorization")
	if auth == nil {
		if secret := ctx.Request.Header.Cookie(sessionCookie); len(secret) > 0 {
			who, session, err := s.db.AuthenticateSession(context.WithoutCancel(ctx), string(secret))
			if err != nil {
				return engine.Principal{}, nil, "", err
			}
			return who, &session, string(secret), nil
		}
	}
	// The scheme name is case-insensitive (RFC 9110 §11.1).
	if len(auth) < 7 || !bytes.EqualFold(auth[:7], []byte("Bearer ")) {
		return engine.Principal{}, nil, "", engine.Errorf(engine.CodeUnauthorized, "send your key as Authorization: Bearer <key>")
	}
	secret := strings.TrimSpace(string(auth[7:]))
	if strings.HasPrefix(secret, engine.SecretRealtime) {
		// Single-use tokens are for /realtime's auth frame only; a request must not spend one.
		return engine.Principal{}, nil, "", engine.Errorf(engine.CodeUnauthorized, "realtime tokens open /realtime only")
	}
	who, err := s.db.Authenticate(secret)
	return who, nil, "", err
}

// checkKind refuses a known key of the wrong kind for the route with 403. A signed-in member
// may do what an API key does (admin-only routes check the role themselves, adminOnly), and
// a route for sessions takes nothing else.
func checkKind(who engine.Principal, want engine.KeyKind) error {
	if want == engine.KeyAPI && who.Kind == engine.KeyMember {
		return nil
	}
	if who.Kind != want {
		return engine.Errorf(engine.CodeForbidden, "this endpoint takes %s, not %s", kindName(want), kindName(who.Kind))
	}
	return nil
}

func kindName(k engine.KeyKind) string {
	switch k {
	case engine.KeyAPI:
		return "an API key (ak_…)"
	case engine.KeyWidget:
		return "a widget key (wk_…)"
	case engine.KeyMember:
		return "a dashboard session"
	default:
		return "a visitor token (vt_…)"
	}
}

// inflightKeys is the in-memory set of idempotency keys whose first request is still running:
// a second one gets 409 at once, without waiting and without touching the disk.
type inflightKeys struct {
	mu   sync.Mutex
	keys map[string]struct{}
}

func newInflightKeys() *inflightKeys { return &inflightKeys{keys: make(map[string]struct{})} }

func (k *inflightKeys) acquire(key string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, busy := k.keys[key]; busy {
		return false
	}
	k.keys[key] = struct{}{}
	return true
}

func (k *inflightKeys) release(key string) {
	k.mu.Lock()
	delete(k.keys, key)
	k.mu.Unlock()
}

// queryLimit reads ?limit= (1–100, default 50).
func queryLimit(ctx *fasthttp.RequestCtx) (int, error) {
	raw := ctx.QueryArgs().Peek("limit")
	if raw == nil {
		return 50, nil
	}
	n, err := strconv.Atoi(string(raw))
	if err != nil || n < 1 || n > 100 {
		return 0, engine.Errorf(engine.CodeValidation, "limit must be a whole number from 1 to 100").
			WithDetails(map[string]any{"field": "limit"})
	}
	return n, nil
}

// encodedReply is a success body the engine already encoded: for a keyed request, the very bytes
// a replay will return, so it is written as it is.
type encodedReply []byte

// answer is the handler result of an engine write that returns its value and its encoding.
func answer[T any](_ T, body []byte, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return encodedReply(body), nil
}
