package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/hooks"
	"github.com/fasthttp/router"
	"github.com/valyala/fasthttp"
)

// maxBodySize is the contract's request body limit; fasthttp refuses larger bodies while reading,
// before any handler (and so before auth) runs.
const maxBodySize = 1 << 20

// server wires the engine to HTTP and owns every background goroutine it starts.
type server struct {
	cfg      Config
	db       *engine.DB
	log      *slog.Logger
	http     *fasthttp.Server
	metrics  *metrics
	limits   *limiter
	inflight *inflightKeys
	attach   attacher
	hooks    *hooks.Service

	stopBackground context.CancelFunc
	background     sync.WaitGroup
	closeOnce      sync.Once
	closeErr       error
}

// newServer opens the database, creates org "default" on an empty one (printing its secrets once
// to out) and starts the background sweepers. It does not listen yet.
func newServer(cfg Config, log *slog.Logger, out io.Writer) (*server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	db, err := engine.Open(cfg.Data, engine.Options{Buckets: hooks.Buckets})
	if err != nil {
		return nil, err
	}
	s := &server{cfg: cfg, db: db, log: log, inflight: newInflightKeys(), attach: refuseAttachments{}}
	if err := s.bootstrap(out); err != nil {
		db.Close()
		return nil, err
	}
	schedule, _ := parseSchedule(cfg.WebhookRetrySchedule) // validated above
	s.hooks, err = hooks.New(hooks.Options{DB: db, DialContext: webhookDialer(), CheckURL: checkWebhookScheme,
		Schedule: schedule, AttemptRetention: cfg.EventRetention, SweepEvery: cfg.SweepEvery, Log: log})
	if err != nil {
		db.Close()
		return nil, err
	}
	s.metrics = newMetrics(db)
	s.metrics.registry.MustRegister(s.hooks.Collectors()...)
	s.limits = newLimiter(db)
	s.http = &fasthttp.Server{
		Handler:            s.routes(),
		Name:               "awardee",
		MaxRequestBodySize: maxBodySize,
		ReadTimeout:        30 * time.Second,
		WriteTimeout:       30 * time.Second,
		IdleTimeout:        2 * time.Minute,
		ErrorHandler:       s.transportError,
		Logger:             fasthttpLogger{log},
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopBackground = cancel
	s.background.Add(3)
	go func() {
		defer s.background.Done()
		if err := s.hooks.Run(ctx); err != nil {
			log.Error("webhook workers stopped", "err", err)
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
		})
	}()
	go func() {
		defer s.background.Done()
		s.limits.forgetIdle(ctx, time.Minute)
	}()
	return s, nil
}

func (s *server) bootstrap(out io.Writer) error {
	orgs, err := s.db.Orgs()
	if err != nil || len(orgs) > 0 {
		return err
	}
	created, err := s.db.CreateOrg(context.Background(), engine.NewOrg{Name: "default"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Created org \"default\" (%s). Its secrets are shown only this once:\n  API key:    %s\n  widget key: %s\n",
		created.OrgID, created.APIKey, created.WidgetKey)
	return nil
}

// ListenAndServe listens on cfg.Addr and serves until Close.
func (s *server) ListenAndServe() error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		s.Close(context.Background())
		return err
	}
	s.log.Info("listening", "addr", ln.Addr().String(), "data", s.cfg.Data)
	return s.Serve(ln)
}

// Serve serves on ln until Close.
func (s *server) Serve(ln net.Listener) error {
	err := s.http.Serve(lingeringListener{ln})
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Close stops in the reverse order of start: stop accepting and drain in-flight requests (until
// ctx ends), stop the background loops, drain the commit loop and close the database.
func (s *server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		if err := s.http.ShutdownWithContext(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			s.log.Warn("http shutdown", "err", err)
		}
		s.stopBackground()
		s.background.Wait()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

// transportError answers what fasthttp refuses before routing, in the contract's envelope.
func (s *server) transportError(ctx *fasthttp.RequestCtx, err error) {
	code, msg := engine.CodeValidation, "the request could not be read"
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		code, msg = engine.CodePayloadTooLarge, "request bodies are limited to 1 MiB"
	}
	s.writeError(ctx, engine.Errorf(code, "%s", msg))
	s.metrics.observe("unmatched", ctx, time.Now())
	// fasthttp closes the connection after this answer without reading the body it refused;
	// closing with unread data makes the kernel reset the connection, and the client may lose
	// the 413 before reading it.
	lingerOnClose(ctx.Conn())
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
	r.SaveMatchedRoutePath = false

	preflighted := map[string]bool{}
	api := func(method, path string, need engine.KeyKind, okStatus int, h handler) {
		r.Handle(method, path, s.route(path, need, okStatus, h))
		// Browsers call the visitor side from other origins: each of its paths answers CORS
		// preflights.
		if need != engine.KeyAPI && !preflighted[path] {
			preflighted[path] = true
			r.OPTIONS(path, s.preflight)
		}
	}
	api("POST", "/conversations", engine.KeyAPI, 201, s.createConversation)
	api("GET", "/conversations", engine.KeyAPI, 200, s.listConversations)
	api("GET", "/conversations/{id}", engine.KeyAPI, 200, s.getConversation)
	api("PATCH", "/conversations/{id}", engine.KeyAPI, 200, s.patchConversation)
	api("POST", "/conversations/{id}/messages", engine.KeyAPI, 201, s.postAgentMessage)
	api("GET", "/conversations/{id}/messages", engine.KeyAPI, 200, s.listMessages)
	api("POST", "/conversations/{id}/bot-messages", engine.KeyAPI, 201, s.postBotMessage)
	api("GET", "/events", engine.KeyAPI, 200, s.listEvents)
	api("POST", "/webhooks", engine.KeyAPI, 201, s.createWebhook)
	api("GET", "/webhooks", engine.KeyAPI, 200, s.listWebhooks)
	api("DELETE", "/webhooks/{id}", engine.KeyAPI, 200, s.deleteWebhook)
	api("GET", "/webhooks/{id}/deliveries", engine.KeyAPI, 200, s.listDeliveries)
	api("POST", "/webhooks/{id}/deliveries/{delivery_id}/retry", engine.KeyAPI, 200, s.retryDelivery)

	api("POST", "/widget/conversations", engine.KeyWidget, 201, s.widgetCreateConversation)
	api("GET", "/widget/conversations/{id}", engine.KeyVisitor, 200, s.getConversation)
	api("GET", "/widget/conversations/{id}/messages", engine.KeyVisitor, 200, s.listMessages)
	api("POST", "/widget/conversations/{id}/messages", engine.KeyVisitor, 201, s.postVisitorMessage)
	api("POST", "/widget/conversations/{id}/request-agent", engine.KeyVisitor, 200, s.requestAgent)

	r.GET("/healthz", s.healthz)
	r.GET("/metrics", s.metrics.handler())

	r.NotFound = func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		s.writeError(ctx, engine.Errorf(engine.CodeNotFound, "no route for %s", ctx.Path()))
		s.metrics.observe("unmatched", ctx, start)
	}
	r.MethodNotAllowed = func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		// The router lists OPTIONS on every path; only the widget's paths answer it.
		if !bytes.HasPrefix(ctx.Path(), []byte("/widget/")) {
			ctx.Response.Header.Set("Allow", withoutOptions(string(ctx.Response.Header.Peek("Allow"))))
		}
		s.writeError(ctx, engine.Errorf(engine.CodeMethodNotAllowed, "%s is not allowed on %s", ctx.Method(), ctx.Path()))
		s.metrics.observe("unmatched", ctx, start)
	}
	r.PanicHandler = func(ctx *fasthttp.RequestCtx, v any) {
		s.writeError(ctx, fmt.Errorf("handler panicked: %v\n%s", v, debug.Stack()))
	}
	return r.Handler
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
