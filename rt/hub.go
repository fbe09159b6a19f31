// Package rt owns the realtime WebSocket hub (GET /realtime): it authenticates each socket by its
// first frame, replays an org's event log after a client's resume offset, then fans committed
// events out live, in offset order, once each. It consumes the engine's event feed and log and
// never writes to the database; publishing never blocks the commit loop, a POST, or another
// connection: every connection has a bounded send queue, and one that overflows is closed.
package rt

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/fasthttp/websocket"
	"github.com/go-json-experiment/json"
	"github.com/valyala/fasthttp"
)

// Close codes of the hub, beside the standard 1001 (going away: the server shuts down).
const (
	CloseBadRequest   = 4000 // the auth frame was read but asks for something impossible (resume_after beyond the latest offset)
	CloseUnauthorized = 4001 // no valid token within the auth timeout
	CloseSlowConsumer = 4008 // the send queue overflowed, or the hub fell behind the feed: resume to catch up
)

// Authenticator finds who a token acts for. *engine.DB is one; the dashboard's realtime tokens
// plug in as another. A principal of kind visitor sees its one conversation, a widget key is
// refused, any other kind sees its whole org.
type Authenticator interface {
	Authenticate(token string) (engine.Principal, error)
}

// Options tune a Hub. Zero fields take the contract's defaults (DefaultOptions).
type Options struct {
	// Auth checks the token of each auth frame; nil uses the database's keys.
	Auth Authenticator
	// PingInterval is how often an idle connection is pinged.
	PingInterval time.Duration
	// PongWait is how long after a ping a connection may stay silent before it is taken as dead.
	PongWait time.Duration
	// AuthTimeout bounds the wait for the auth frame.
	AuthTimeout time.Duration
	// SendQueue is how many frames may wait for one connection; one more closes it with 4008.
	SendQueue int
	// WriteTimeout bounds one frame's write to a peer.
	WriteTimeout time.Duration
	// Log receives what the hub cannot tell a client (failed log reads).
	Log *slog.Logger
}

// DefaultOptions are the contract's values: auth within 5 s, a ping every 30 s.
func DefaultOptions() Options {
	return Options{
		PingInterval: 30 * time.Second,
		PongWait:     10 * time.Second,
		AuthTimeout:  5 * time.Second,
		SendQueue:    256,
		WriteTimeout: 10 * time.Second,
	}
}

func (o Options) withDefaults(db *engine.DB) Options {
	d := DefaultOptions()
	if o.Auth == nil {
		o.Auth = db
	}
	if o.PingInterval <= 0 {
		o.PingInterval = d.PingInterval
	}
	if o.PongWait <= 0 {
		o.PongWait = d.PongWait
	}
	if o.AuthTimeout <= 0 {
		o.AuthTimeout = d.AuthTimeout
	}
	if o.SendQueue <= 0 {
		o.SendQueue = d.SendQueue
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = d.WriteTimeout
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// Hub is the set of realtime connections and the one goroutine that feeds them.
type Hub struct {
	db       *engine.DB
	opts     Options
	upgrader websocket.FastHTTPUpgrader

	// mu is the delivery lock: the live loop fans each batch out under it, and a connection's
	// switch from replay to live happens under it, so no event falls between the two.
	mu     sync.Mutex
	orgs   map[string]*orgConns
	all    map[*conn]struct{} // every open connection, authenticated or not
	closed bool

	sub      *engine.Subscription
	stopLive context.CancelFunc
	liveDone chan struct{}
	conns    sync.WaitGroup // connection handlers still running

	// revocations are the recent Disconnect calls, newest last, numbered up to revocationCount:
	// a connection whose token was checked before one of them but attaches after it is refused
	// at attach, so a revocation cannot miss a socket that was authenticating meanwhile.
	revocations     []revocation
	revocationCount uint64
	// beforeAttach, when set by a test, runs between a connection's authentication and attach.
	beforeAttach func()

	// beforeLive, when set by a test, runs between a connection's replay and its switch to
	// live delivery: the moment an event committed then must not be lost or doubled.
	beforeLive func()

	framesSent   atomic.Uint64
	slowCloses   atomic.Uint64
	replayed     atomic.Uint64
	fellBehind   atomic.Uint64
	authFailures atomic.Uint64
}

// orgConns are one org's authenticated connections: those that see the whole org, and visitors
// by conversation.
type orgConns struct {
	org    map[*conn]struct{}
	byConv map[string][]*conn // a slice, not a set: most conversations have one tab open
}

// New starts a hub on db: it subscribes to the event feed now, so every event committed after
// New returns reaches the connections that are live by then. Close stops it.
func New(db *engine.DB, opts Options) *Hub {
	opts = opts.withDefaults(db)
	h := &Hub{
		db:   db,
		opts: opts,
		upgrader: websocket.FastHTTPUpgrader{
			// Frames from clients are one small auth frame and pongs; replies are written from
			// pooled buffers, so an idle connection holds neither.
			ReadBufferSize:  256,
			WriteBufferSize: 4096,
			WriteBufferPool: &sync.Pool{},
			// The widget runs on our users' sites, on any origin. No cookie opens anything
			// here: the token in the first frame is the only credential, so any origin may
			// connect.
			CheckOrigin: func(*fasthttp.RequestCtx) bool { return true },
			Error:       refuseUpgrade,
		},
		orgs:     map[string]*orgConns{},
		all:      map[*conn]struct{}{},
		sub:      db.Subscribe("realtime"),
		liveDone: make(chan struct{}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.stopLive = cancel
	go h.live(ctx)
	return h
}

// Handler upgrades GET /realtime to a WebSocket and serves it until either side closes. The
// fasthttp.Server serving it must set KeepHijackedConns: the hub owns each socket after the
// upgrade (see serve).
func (h *Hub) Handler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		_ = h.upgrader.Upgrade(ctx, h.serve) // a refusal is answered by refuseUpgrade
	}
}

// refuseUpgrade answers a request that is not a WebSocket handshake in the contract's envelope.
func refuseUpgrade(ctx *fasthttp.RequestCtx, status int, reason error) {
	code := engine.CodeValidation
	if status == fasthttp.StatusMethodNotAllowed {
		code = engine.CodeMethodNotAllowed
	}
	type detail struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	body, _ := json.Marshal(struct {
		Error detail `json:"error"`
	}{detail{code, "GET /realtime expects a WebSocket handshake: " + reason.Error()}})
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// Close closes every connection with 1001 and stops the hub's goroutines, waiting for the
// connections' handlers until ctx ends (then it cuts the remaining sockets). The database is
// not used after Close returns.
func (h *Hub) Close(ctx context.Context) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	for c := range h.all {
		c.closeWith(websocket.CloseGoingAway, "the server is shutting down")
	}
	h.mu.Unlock()
	h.stopLive()
	<-h.liveDone
	h.sub.Close()

	done := make(chan struct{})
	go func() {
		h.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		h.mu.Lock()
		for c := range h.all {
			c.cut()
		}
		h.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// Stats is the hub's standing, for /metrics.
type Stats struct {
	Connections        map[string]int // authenticated connections by principal kind
	Unauthenticated    int            // connections still waiting for their auth frame
	FramesSent         uint64
	SlowConsumerCloses uint64 // connections closed with 4008 because their queue overflowed
	FellBehind         uint64 // times the hub's own feed subscription fell behind (every connection then closed with 4008)
	ReplayedEvents     uint64 // events sent from the log on resume
	AuthFailures       uint64
}

// Stats reports the hub's connections and counters.
func (h *Hub) Stats() Stats {
	st := Stats{
		Connections:        map[string]int{string(engine.KeyAPI): 0, string(engine.KeyVisitor): 0},
		FramesSent:         h.framesSent.Load(),
		SlowConsumerCloses: h.slowCloses.Load(),
		FellBehind:         h.fellBehind.Load(),
		ReplayedEvents:     h.replayed.Load(),
		AuthFailures:       h.authFailures.Load(),
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.all {
		if c.attached {
			st.Connections[string(c.who.Kind)]++
		} else {
			st.Unauthenticated++
		}
	}
	return st
}

// register adds a new connection, or reports that the hub is closed.
func (h *Hub) register(c *conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.all[c] = struct{}{}
	h.conns.Add(1)
	return true
}

// unregister forgets a connection whose handler is ending.
func (h *Hub) unregister(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.all, c)
	if c.attached {
		oc := h.orgs[c.who.OrgID]
		if c.who.Kind == engine.KeyVisitor {
			tabs := slices.DeleteFunc(oc.byConv[c.who.ConversationID], func(o *conn) bool { return o == c })
			if len(tabs) == 0 {
				delete(oc.byConv, c.who.ConversationID)
			} else {
				oc.byConv[c.who.ConversationID] = tabs
			}
		} else {
			delete(oc.org, c)
		}
		if len(oc.org) == 0 && len(oc.byConv) == 0 {
			delete(h.orgs, c.who.OrgID)
		}
	}
	h.conns.Done()
}

// attach makes an authenticated connection a receiver of its org's events. From here on, live
// delivery holds them in the connection's pending list until switchLive.
func (h *Hub) attach(c *conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	for _, r := range h.revocations {
		if r.number > c.authedAt && r.org == c.who.OrgID && r.match(c.who) {
			c.refuse(errorFrame(engine.CodeUnauthorized, revokedMessage), CloseUnauthorized, "revoked")
			return false
		}
	}
	oc := h.orgs[c.who.OrgID]
	if oc == nil {
		oc = &orgConns{org: map[*conn]struct{}{}, byConv: map[string][]*conn{}}
		h.orgs[c.who.OrgID] = oc
	}
	if c.who.Kind == engine.KeyVisitor {
		oc.byConv[c.who.ConversationID] = append(oc.byConv[c.who.ConversationID], c)
	} else {
		oc.org[c] = struct{}{}
	}
	c.attached = true
	return true
}

// switchLive ends a connection's replay: under the delivery lock, the events live delivery held
// for it that the replay did not already send are queued, in offset order, and from then on
// live delivery queues directly.
func (h *Hub) switchLive(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.goLive()
}

// live is the hub's one reader of the event feed.
func (h *Hub) live(ctx context.Context) {
	defer close(h.liveDone)
	for {
		events, err := h.sub.Next(ctx, 512)
		if errors.Is(err, engine.ErrFellBehind) {
			h.fellBehindFeed()
			continue
		}
		if err != nil {
			return
		}
		h.deliver(events)
	}
}

// deliver fans a batch out to the connections that may see each event. It only appends to
// queues (and closes the connections whose queue is full), so it never waits for a peer.
func (h *Hub) deliver(events []engine.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ev := range events {
		oc := h.orgs[ev.OrgID]
		if oc == nil {
			continue
		}
		visitors := oc.byConv[ev.ConversationID]
		if len(oc.org) == 0 && len(visitors) == 0 {
			continue
		}
		f, ok := eventFrame(ev)
		if !ok {
			h.opts.Log.Warn("realtime: an event could not be framed", "type", ev.Type, "offset", ev.Offset)
			continue
		}
		for c := range oc.org {
			c.offer(ev.Offset, f)
		}
		for _, c := range visitors {
			c.offer(ev.Offset, f)
		}
	}
}

// fellBehindFeed handles events lost to the feed's ring: the hub cannot tell which connections
// they were for without re-reading every org's log, so every connection that receives events
// is closed with 4008 and resumes from its last offset, which the log replays without a gap.
func (h *Hub) fellBehindFeed() {
	h.fellBehind.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, oc := range h.orgs {
		for c := range oc.org {
			c.closeWith(CloseSlowConsumer, "the server fell behind; resume from your last offset")
		}
		for _, tabs := range oc.byConv {
			for _, c := range tabs {
				c.closeWith(CloseSlowConsumer, "the server fell behind; resume from your last offset")
			}
		}
	}
}

// Disconnect closes, with an unauthorized frame and 4001, every connection of org that sees the
// whole org and whose principal match reports: how a revoked API key, a disabled member or an
// ended session stops receiving events at once. It returns how many it closed.
func (h *Hub) Disconnect(org string, match func(engine.Principal) bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	h.revocationCount++
	h.revocations = append(h.revocations, revocation{number: h.revocationCount, org: org, match: match, at: now})
	// A token check is one read; one older than revocationMemory is long finished.
	for len(h.revocations) > 0 && now.Sub(h.revocations[0].at) > revocationMemory {
		h.revocations = h.revocations[1:]
	}
	oc := h.orgs[org]
	if oc == nil {
		return 0
	}
	n := 0
	for c := range oc.org {
		if match(c.who) {
			c.refuse(errorFrame(engine.CodeUnauthorized, revokedMessage), CloseUnauthorized, "revoked")
			n++
		}
	}
	return n
}

const revokedMessage = "the key or session of this connection was revoked"

// revocationMemory is how long Disconnect's rule is kept for connections still authenticating.
const revocationMemory = time.Minute

type revocation struct {
	number uint64
	org    string
	match  func(engine.Principal) bool
	at     time.Time
}
