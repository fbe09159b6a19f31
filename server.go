package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/awardee/awardee/blobs"
	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/hooks"
	"github.com/awardee/awardee/rt"
	"github.com/awardee/awardee/web"
	"github.com/fasthttp/router"
	"github.com/valyala/fasthttp"
)

// maxBodySize is the contract's request body limit; fasthttp refuses larger bodies while reading,
// before any handler (and so before auth) runs.
const maxBodySize = 1 << 20

// Transport limits of the contract (section 3).
const (
	maxRequestLine = 8 << 10  // a longer request line is 414
	maxHeaderBytes = 16 << 10 // longer header fields are 431
	// headerTimeout is how long a new connection has to send its headers: a client that holds
	// a connection without asking anything costs a descriptor, so it must not keep it long.
	headerTimeout = 10 * time.Second
	// bodyTimeout is how long a request's body may take once its headers are in.
	bodyTimeout = 30 * time.Second
	// readBufferSize holds a request head at both limits (plus its line ends), so every head
	// within them parses and the handler can tell which limit a larger one broke.
	readBufferSize = maxRequestLine + maxHeaderBytes + 4
)

// Codes of the transport errors; the contract names their statuses only.
const (
	codeRequestTimeout  = "request_timeout"
	codeURITooLong      = "uri_too_long"
	codeHeadersTooLarge = "headers_too_large"
)

// server wires the engine to HTTP and owns every background goroutine it starts.
type server struct {
	cfg      Config
	db       *engine.DB
	log      *slog.Logger
	http     *fasthttp.Server
	metrics  *metrics
	limits   *limiter
	inflight *inflightKeys
	signIns  *signInThrottle
	attach   attacher
	hooks    *hooks.Service
	blobs    *blobs.Store
	fetcher  *blobs.Fetcher
	pprof    *pprofServer  // nil unless --pprof-addr
	certs    *certificates // nil unless --tls-cert

	teamPages, visitorPages *pageGate // the list routes' gates, set by routes()
	conns                   connStats
	maxConns                int
	hub                     *rt.Hub
	widget                  *web.Widget
	backups                 backupState

	// router is the route table, set by routes(): openapi.json must describe every route of it.
	router *router.Router

	stopBackground context.CancelFunc
	background     sync.WaitGroup
	closeOnce      sync.Once
	closeErr       error
}

// newServer opens the database, creates org "default" on an empty one (printing its secrets once
// to out) and starts the background sweepers. It does not listen: the caller binds its listener
// first, so that a start that cannot have its address creates no org and prints no secret.
func newServer(cfg Config, log *slog.Logger, out io.Writer) (*server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	db, err := engine.Open(cfg.Data, engine.Options{Buckets: hooks.Buckets, Now: cfg.now, OnMigrate: func(from, to uint64) {
		// The old file is rewritten in place, in one transaction: a copy made before this start
		// (awardee backup, with the previous binary) is the way back.
		log.Warn("migrating the database to this version's layout; a backup made with `awardee backup` before this start is the way back to the old version",
			"from_schema", from, "to_schema", to, "data", cfg.Data)
	}})
	if err != nil {
		return nil, err
	}
	store, err := blobs.Open(filepath.Join(cfg.Data, "blobs"), blobs.Options{})
	if err != nil {
		db.Close()
		return nil, err
	}
	publicURL := cfg.PublicURL
	if publicURL == "" && cfg.TLSCert != "" {
		publicURL = "https://" + cfg.Addr
	} else if publicURL == "" {
		publicURL = "http://" + cfg.Addr
	}
	fetcher := blobs.NewFetcher(blobs.FetchOptions{AllowPrivate: cfg.AllowPrivateNetworks})
	s := &server{cfg: cfg, db: db, log: log, inflight: newInflightKeys(), signIns: newSignInThrottle(), blobs: store, fetcher: fetcher,
		attach: &fetchAttacher{fetcher: fetcher, store: store, publicURL: publicURL, log: log}}
	if s.widget, err = web.NewWidget(); err != nil {
		db.Close()
		return nil, err
	}
	// Read before the first org is made, so a start that cannot serve HTTPS prints no secret.
	if cfg.TLSCert != "" {
		if s.certs, err = loadCertificates(cfg.TLSCert, cfg.TLSKey, log); err != nil {
			db.Close()
			return nil, err
		}
	}
	// Bound before the first org is made, so a start that cannot have it prints no secret.
	if cfg.PprofAddr != "" {
		if s.pprof, err = startPprof(cfg.PprofAddr, log); err != nil {
			db.Close()
			return nil, err
		}
	}
	if err := s.bootstrap(out, publicURL); err != nil {
		if s.pprof != nil {
			s.pprof.close()
		}
		db.Close()
		return nil, err
	}
	schedule, _ := parseSchedule(cfg.WebhookRetrySchedule) // validated above
	dial, checkURL := webhookGuard(cfg)
	s.hooks, err = hooks.New(hooks.Options{DB: db, DialContext: dial, CheckURL: checkURL,
		Schedule: schedule, AttemptRetention: cfg.EventRetention, SweepEvery: cfg.SweepEvery, Log: log})
	if err != nil {
		db.Close()
		return nil, err
	}
	s.metrics = newMetrics(db)
	s.metrics.registry.MustRegister(s.hooks.Collectors()...)
	s.limits = newLimiter(db)
	s.maxConns = connectionCap(cfg.MaxConns, descriptorLimit())
	if cfg.MaxConns > s.maxConns {
		log.Warn("--max-conns lowered to what the file-descriptor limit allows", "asked", cfg.MaxConns, "max_conns", s.maxConns)
	}
	s.metrics.watchConnections(&s.conns)
	s.hub = rt.New(db, rt.Options{Log: log})
	s.metrics.watchRealtime(s.hub)
	s.http = &fasthttp.Server{
		Handler:            s.routes(),
		Name:               "awardee",
		MaxRequestBodySize: maxBodySize,
		ReadBufferSize:     readBufferSize,
		// The listener is the connection cap; fasthttp's own must never be the one that bites,
		// as it would answer 503 where the listener makes the connection wait.
		Concurrency: max(fasthttp.DefaultConcurrency, 2*s.maxConns),
		// On a new connection fasthttp arms ReadTimeout when it is accepted and keeps it until
		// the headers are in: that is the header timeout. HeaderReceived then gives the body its
		// own deadline.
		ReadTimeout: headerTimeout,
		HeaderReceived: func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
			return fasthttp.RequestConfig{ReadTimeout: bodyTimeout}
		},
		WriteTimeout: 30 * time.Second,
		IdleTimeout:  2 * time.Minute,
		ErrorHandler: s.transportError,
		Logger:       fasthttpLogger{log},
		// fasthttp's errors would otherwise quote the head they could not parse, cookies and
		// tokens included, into the log.
		SecureErrorLogMessage: true,
		// Only /realtime hijacks: its hub owns those sockets, so fasthttp frees the request.
		KeepHijackedConns: true,
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopBackground = cancel
	s.background.Add(4)
	go func() {
		defer s.background.Done()
		if err := s.hooks.Run(ctx); err != nil {
			log.Error("webhook workers stopped", "err", err)
		}
	}()
	go func() {
		defer s.background.Done()
		ticker := time.NewTicker(cfg.SweepEvery)
		defer ticker.Stop()
		for {
			s.sweepOrphansOnce(ctx)
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
		}
	}()
	go func() {
		defer s.background.Done()
		db.RunMaintenance(ctx, engine.Maintenance{
			KeepFrom:       s.hooks.KeepFrom,
			EventRetention: cfg.EventRetention,
			IdempotencyTTL: cfg.IdempotencyTTL,
			Every:          cfg.SweepEvery,
			OnError:        func(what string, err error) { log.Error("sweep failed", "what", what, "err", err) },
			// A dashboard's WebSocket authenticated once, with a token its session minted: when
			// the session ends by going idle or growing old, the socket ends with it.
			OnSessionsEnded: s.closeEndedSessions,
		})
	}()
	go func() {
		defer s.background.Done()
		s.limits.forgetIdle(ctx, time.Minute)
	}()
	return s, nil
}

// bootstrapAdminEmail is the first admin's email: something to sign in with before anyone has
// set up the team; the admin changes name and password from the dashboard.
const bootstrapAdminEmail = "admin@localhost"

// bootstrap makes an empty database usable: org "default" with its keys and an admin member,
// whose secrets are printed this once, with the dashboard's address to sign in at.
func (s *server) bootstrap(out io.Writer, publicURL string) error {
	orgs, err := s.db.Orgs()
	if err != nil || len(orgs) > 0 {
		return err
	}
	created, err := s.db.CreateOrg(context.Background(), engine.NewOrg{Name: "default"})
	if err != nil {
		return err
	}
	admin, err := s.db.CreateMember(context.Background(), created.OrgID, engine.NewMember{Email: bootstrapAdminEmail, Name: "Admin", Role: engine.RoleAdmin})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Created org \"default\" (%s). Its secrets are shown only this once:\n  API key:    %s\n  widget key: %s\n"+
		"  dashboard:  %s/app/\n  email:      %s\n  password:   %s\n",
		created.OrgID, created.APIKey, created.WidgetKey, strings.TrimSuffix(publicURL, "/"), admin.Member.Email, admin.Password)
	fmt.Fprintf(out, "  widget demo: %s/demo?key=%s\n", strings.TrimSuffix(publicURL, "/"), created.WidgetKey)
	return nil
}

// Serve serves on ln until Close, holding at most s.maxConns connections (see limitListener).
func (s *server) Serve(ln net.Listener) error {
	s.log.Info("listening", "addr", ln.Addr().String(), "data", s.cfg.Data, "tls", s.certs != nil,
		"max_conns", s.maxConns, "max_conns_per_ip", s.cfg.MaxConnsPerIP)
	if s.certs != nil {
		// Inside the connection cap's listener, which so counts TCP connections, and whose
		// connections fasthttp reads as plaintext (tls.go).
		ln = tls.NewListener(ln, s.certs.config())
	}
	err := s.http.Serve(newLimitListener(ln, s.maxConns, s.cfg.MaxConnsPerIP, &s.conns, s.log))
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// errDrainTimedOut is joined to Close's error when in-flight requests were still running when
// its context ended: they were cut off, and the stop was not clean.
var errDrainTimedOut = errors.New("the drain timed out; requests still in flight were cut off")

// Close stops in the reverse order of start: stop accepting and drain in-flight requests (until
// ctx ends), stop the background loops, drain the commit loop and close the database.
func (s *server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		var drainErr error
		if err := s.http.ShutdownWithContext(ctx); errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			drainErr = errDrainTimedOut
		} else if err != nil {
			s.log.Warn("http shutdown", "err", err)
		}
		// WebSockets are hijacked, so the drain does not wait for them: they get 1001 now,
		// while the database they replay from is still open.
		if s.pprof != nil {
			s.pprof.close()
		}
		if err := s.hub.Close(ctx); err != nil {
			s.log.Warn("realtime shutdown cut connections", "err", err)
		}
		s.stopBackground()
		s.background.Wait()
		s.fetcher.Close()
		s.closeErr = errors.Join(drainErr, s.db.Close())
	})
	return s.closeErr
}

// transportError answers what fasthttp refuses before routing, in the contract's envelope.
func (s *server) transportError(ctx *fasthttp.RequestCtx, err error) {
	start := time.Now()
	var small *fasthttp.ErrSmallBuffer
	var netErr net.Error
	var refusal *engine.Error
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		refusal = engine.Errorf(engine.CodePayloadTooLarge, "request bodies are limited to 1 MiB")
	case errors.As(err, &small):
		// The head did not fit the read buffer, which holds one at both limits: it broke one.
		refusal = headTooLarge(requestLineOver(ctx.Conn(), maxRequestLine))
	case errors.Is(err, fasthttp.ErrTimeout) || errors.As(err, &netErr) && netErr.Timeout():
		refusal = engine.Errorf(codeRequestTimeout, "the request did not arrive in time: headers are due 10 s after connecting, a body 30 s after its headers")
	default:
		refusal = engine.Errorf(engine.CodeValidation, "the request could not be read")
	}
	// The path of a refused request may be unknown (its head was not parsed), and a browser
	// must be able to read the refusal of a widget call: transport errors always carry CORS,
	// which is harmless on the team's endpoints: a wildcard origin never lets a page read an
	// answer to a request sent with the dashboard's cookie, and the cookie is SameSite=Strict.
	setCORS(ctx)
	s.writeError(ctx, refusal)
	s.metrics.observe("unmatched", ctx, start)
	s.logRequest(ctx, "unmatched", start)
	// fasthttp closes the connection after this answer without reading what it refused; closing
	// with unread data makes the kernel reset the connection, and the client may lose the
	// answer before reading it.
	lingerOnClose(ctx.Conn())
}

func headTooLarge(lineOver bool) *engine.Error {
	if lineOver {
		return engine.Errorf(codeURITooLong, "the request line is limited to 8 KiB")
	}
	return engine.Errorf(codeHeadersTooLarge, "request headers are limited to 16 KiB")
}

// checkHead refuses a head that fits the read buffer but breaks a limit: the buffer holds both
// limits at once, so one may be over while the whole still fits.
func (s *server) checkHead(ctx *fasthttp.RequestCtx) bool {
	h := &ctx.Request.Header
	line := len(h.Method()) + 1 + len(h.RequestURI()) + 1 + len(h.Protocol())
	if line <= maxRequestLine && len(h.RawHeaders()) <= maxHeaderBytes {
		return true
	}
	start := time.Now()
	s.writeError(ctx, headTooLarge(line > maxRequestLine))
	s.metrics.observe("unmatched", ctx, start)
	return false
}

type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...))
}

// routes is the whole HTTP surface.
func (s *server) routes() fasthttp.RequestHandler {
	r := router.New()
	r.RedirectTrailingSlash = false
	r.RedirectFixedPath = false
	r.HandleOPTIONS = false
	// The request log line names the matched pattern; saving it costs every request a little,
	// so only while that line is written.
	r.SaveMatchedRoutePath = s.log.Enabled(context.Background(), slog.LevelDebug)

	preflighted := map[string]bool{}
	// List routes: bounded pages in flight. Visitors have a gate of their own, so readers with
	// nothing but the public widget key can never hold every slot the team's lists need.
	pages := newPageGate(listsInFlight, listWait)
	visitorPages := newPageGate(visitorListsInFlight, listWait)
	s.teamPages, s.visitorPages = pages, visitorPages
	s.router = r
	api := func(method, path string, need engine.KeyKind, okStatus int, h handler) {
		r.Handle(method, path, s.route(path, need, okStatus, h))
		// Browsers call the visitor side from other origins: each of its paths answers CORS
		// preflights.
		if (need == engine.KeyWidget || need == engine.KeyVisitor) && !preflighted[path] {
			preflighted[path] = true
			r.OPTIONS(path, s.preflight)
		}
	}
	api("POST", "/conversations", engine.KeyAPI, 201, s.createConversation)
	api("GET", "/conversations", engine.KeyAPI, 200, pages.bound(s.listConversations))
	api("GET", "/conversations/{id}", engine.KeyAPI, 200, s.getConversation)
	api("PATCH", "/conversations/{id}", engine.KeyAPI, 200, s.patchConversation)
	api("POST", "/conversations/{id}/messages", engine.KeyAPI, 201, s.postAgentMessage)
	api("GET", "/conversations/{id}/messages", engine.KeyAPI, 200, pages.bound(s.listMessages))
	api("POST", "/conversations/{id}/bot-messages", engine.KeyAPI, 201, s.postBotMessage)
	api("GET", "/events", engine.KeyAPI, 200, pages.bound(s.listEvents))
	api("GET", "/assets", engine.KeyAPI, 200, pages.bound(s.listAssets))
	api("GET", "/usage", engine.KeyAPI, 200, s.usage)

	api("POST", "/members", engine.KeyAPI, 201, adminOnly(s.createMember))
	api("GET", "/members", engine.KeyAPI, 200, adminOnly(s.listMembers))
	api("PATCH", "/members/{id}", engine.KeyAPI, 200, adminOnly(s.patchMember))
	api("GET", "/keys", engine.KeyAPI, 200, adminOnly(s.listKeys))
	api("POST", "/keys", engine.KeyAPI, 201, adminOnly(s.createKey))
	api("DELETE", "/keys/{id}", engine.KeyAPI, 200, adminOnly(s.deleteKey))
	r.POST("/session", s.signIn)
	api("GET", "/session", engine.KeyMember, 200, s.getSession)
	api("DELETE", "/session", engine.KeyMember, 200, s.signOut)
	api("POST", "/session/password", engine.KeyMember, 200, s.changePassword)
	api("POST", "/session/realtime-token", engine.KeyMember, 200, s.realtimeToken)
	api("GET", "/org/identity-secret", engine.KeyAPI, 200, adminOnly(s.getIdentitySecret))
	api("POST", "/org/identity-secret", engine.KeyAPI, 200, adminOnly(s.rotateIdentitySecret))
	r.GET("/files/{org}/{file}", s.serveFile)
	api("GET", "/admin/backup", engine.KeyAPI, 200, s.backup)
	api("POST", "/webhooks", engine.KeyAPI, 201, s.createWebhook)
	api("GET", "/webhooks", engine.KeyAPI, 200, s.listWebhooks)
	api("DELETE", "/webhooks/{id}", engine.KeyAPI, 200, s.deleteWebhook)
	api("GET", "/webhooks/{id}/deliveries", engine.KeyAPI, 200, s.listDeliveries)
	api("POST", "/webhooks/{id}/deliveries/{delivery_id}/retry", engine.KeyAPI, 200, s.retryDelivery)

	api("POST", "/widget/conversations", engine.KeyWidget, 201, s.widgetCreateConversation)
	api("GET", "/widget/conversations/{id}", engine.KeyVisitor, 200, s.getConversation)
	api("GET", "/widget/conversations/{id}/messages", engine.KeyVisitor, 200, visitorPages.bound(s.listMessages))
	api("POST", "/widget/conversations/{id}/messages", engine.KeyVisitor, 201, s.postVisitorMessage)
	api("POST", "/widget/conversations/{id}/request-agent", engine.KeyVisitor, 200, s.requestAgent)

	app := web.NewApp("/app/")
	app.NotFound = func(ctx *fasthttp.RequestCtx) {
		s.writeError(ctx, engine.Errorf(engine.CodeNotFound, "no dashboard file at %s", ctx.Path()))
	}
	r.GET("/app/{file:*}", func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		setRequestID(ctx)
		app.Serve(ctx)
		s.metrics.observe("/app/", ctx, start)
	})
	r.GET("/widget.js", s.widget.ServeScript)
	r.GET("/demo", s.widget.ServeDemo)
	r.GET("/demo.css", s.widget.ServeDemoCSS)

	r.GET("/healthz", s.healthz)
	r.GET("/metrics", s.metricsHandler())
	r.GET("/realtime", s.realtime())
	r.GET("/openapi.json", s.openAPI())

	r.NotFound = func(ctx *fasthttp.RequestCtx) {
		// The dashboard's pages are relative to /app/; the bare path a person types goes there.
		// (A route of its own for /app would take /app/ away from the dashboard's catch-all.)
		if ctx.IsGet() && string(ctx.Path()) == "/app" {
			setRequestID(ctx)
			ctx.Redirect("/app/", fasthttp.StatusPermanentRedirect)
			return
		}
		start := time.Now()
		s.writeError(ctx, engine.Errorf(engine.CodeNotFound, "no route for %s", ctx.Path()))
		s.metrics.observe("unmatched", ctx, start)
	}
	r.MethodNotAllowed = func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		// The router lists OPTIONS on every path; only the widget's paths answer it.
		if !isWidgetPath(ctx.Path()) {
			ctx.Response.Header.Set("Allow", withoutOptions(string(ctx.Response.Header.Peek("Allow"))))
		}
		s.writeError(ctx, engine.Errorf(engine.CodeMethodNotAllowed, "%s is not allowed on %s", ctx.Method(), ctx.Path()))
		s.metrics.observe("unmatched", ctx, start)
	}
	r.PanicHandler = func(ctx *fasthttp.RequestCtx, v any) {
		s.writeError(ctx, fmt.Errorf("handler panicked: %v\n%s", v, debug.Stack()))
	}
	return func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		// Every response carries one (section 3), the static ones included, and so every
		// request log line.
		setRequestID(ctx)
		requestStarted(ctx.Conn())
		// Set before routing, so that every widget answer carries them: the router's own 404
		// and 405 included.
		if isWidgetPath(ctx.Path()) {
			setCORS(ctx)
		}
		if s.checkHead(ctx) {
			r.Handler(ctx)
		}
		s.logRequest(ctx, matchedRoute(ctx), start)
	}
}

func isWidgetPath(p []byte) bool {
	return bytes.HasPrefix(p, []byte("/widget/")) || bytes.Equal(p, []byte("/widget"))
}

func withoutOptions(allow string) string {
	var kept []string
	for _, m := range strings.Split(allow, ", ") {
		if m != "OPTIONS" {
			kept = append(kept, m)
		}
	}
	return strings.Join(kept, ", ")
}

// healthz is 200 while writes commit and 503 while they cannot (disk full, I/O errors, a damaged
// page, shutting down), so a load balancer or supervisor sees what clients would meet.
func (s *server) healthz(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	setRequestID(ctx)
	if err := s.db.WriteHealth(context.WithoutCancel(ctx)); err != nil {
		s.writeError(ctx, err)
	} else {
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"status":"ok"}`)
	}
	s.metrics.observe("/healthz", ctx, start)
}

// preflight answers browsers' CORS checks for the widget endpoints, which web pages on other
// origins call with a bearer token (no cookies, so a wildcard origin is safe).
func (s *server) preflight(ctx *fasthttp.RequestCtx) {
	setRequestID(ctx)
	setCORS(ctx)
	ctx.Response.Header.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
	ctx.Response.Header.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key")
	ctx.Response.Header.Set("Access-Control-Max-Age", "600")
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}

func setCORS(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.Set("Access-Control-Allow-Origin", "*")
	ctx.Response.Header.Set("Access-Control-Expose-Headers", "X-Request-Id, Retry-After, RateLimit, RateLimit-Policy, Idempotent-Replayed")
}
