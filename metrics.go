package main

import (
	"crypto/sha256"
	"crypto/subtle"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/rt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// metrics is the server's Prometheus registry: its own, not the global default, so that two
// servers in one test process never share counters.
type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.HistogramVec
	messages *prometheus.CounterVec

	// observers caches the request histogram's child of each label set seen: finding it in the
	// vector hashes and compares three labels on every request, and the status formats a number.
	observersMu sync.RWMutex
	observers   map[observerKey]prometheus.Observer

	// bySource caches the message counter of each source (a fixed few), under observersMu.
	bySource map[string]prometheus.Counter
}

type observerKey struct {
	route, method string
	status        int
}

func newMetrics(db *engine.DB) *metrics {
	m := &metrics{
		registry:  prometheus.NewRegistry(),
		observers: make(map[observerKey]prometheus.Observer),
		bySource:  make(map[string]prometheus.Counter),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "awardee_http_request_duration_seconds",
			Help:    "HTTP request latency by route, method and status; its _count is the request count.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 15},
		}, []string{"route", "method", "status"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "awardee_messages_posted_total",
			Help: "Messages posted through the API, by source (api, bot, widget).",
		}, []string{"source"}),
	}
	m.registry.MustRegister(m.requests, m.messages,
		conversationsCollector{db: db, desc: prometheus.NewDesc("awardee_conversations", "Conversations by status, across all orgs.", []string{"status"}, nil)},
		feedCollector{db: db,
			lag:     prometheus.NewDesc("awardee_feed_lag_events", "Committed events the slowest subscription of a consumer has not read yet.", []string{"consumer"}, nil),
			dropped: prometheus.NewDesc("awardee_feed_dropped_total", "Times a consumer fell so far behind the event feed that it had to re-read the log.", []string{"consumer"}, nil)},
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "awardee_commit_batches_total", Help: "Write transactions fsync'd by the group-commit loop."},
			func() float64 { return float64(db.CommitStats().Batches) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "awardee_commit_units_total", Help: "Write units committed; divided by batches, the mean batch size."},
			func() float64 { return float64(db.CommitStats().Units) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "awardee_commit_queue_length", Help: "Write units waiting for the next batch."},
			func() float64 { return float64(db.Queued()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "awardee_commit_failed_units_total", Help: "Write units answered with an error (rolled back alone)."},
			func() float64 { return float64(db.CommitStats().Failed) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(route string, ctx *fasthttp.RequestCtx, start time.Time) {
	m.observer(observerKey{route, methodLabel(ctx.Method()), ctx.Response.StatusCode()}).Observe(time.Since(start).Seconds())
}

// observer returns the histogram child of k. The label sets are bounded (routes and methods are
// fixed lists, statuses the few the server answers), so the cache is too.
func (m *metrics) observer(k observerKey) prometheus.Observer {
	m.observersMu.RLock()
	o, ok := m.observers[k]
	m.observersMu.RUnlock()
	if ok {
		return o
	}
	o = m.requests.WithLabelValues(k.route, k.method, strconv.Itoa(k.status))
	m.observersMu.Lock()
	m.observers[k] = o
	m.observersMu.Unlock()
	return o
}

func (m *metrics) messagePosted(source string) {
	m.observersMu.RLock()
	c, ok := m.bySource[source]
	m.observersMu.RUnlock()
	if !ok {
		c = m.messages.WithLabelValues(source)
		m.observersMu.Lock()
		m.bySource[source] = c
		m.observersMu.Unlock()
	}
	c.Inc()
}

// watchRealtime reports the WebSocket hub (realtime.go).
func (m *metrics) watchRealtime(h *rt.Hub) { m.registry.MustRegister(newRealtimeCollector(h)) }

// watchConnections exports the listener's counters.
func (m *metrics) watchConnections(c *connStats) {
	m.registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "awardee_http_open_connections", Help: "Client connections open now."},
			func() float64 { return float64(c.open.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "awardee_http_connection_cap_waits_total", Help: "Times a new connection had to wait because --max-conns were open."},
			func() float64 { return float64(c.capWaits.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "awardee_http_connections_refused_total", Help: "Connections closed on accept because their address held --max-conns-per-ip already."},
			func() float64 { return float64(c.refusedPerAddr.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "awardee_http_accept_retries_total", Help: "Accepts that failed for lack of descriptors or memory and were retried after a pause."},
			func() float64 { return float64(c.acceptRetries.Load()) }))
}

// metricsHandler serves /metrics; with --metrics-token it answers only a request bearing it.
func (s *server) metricsHandler() fasthttp.RequestHandler {
	h := fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	return func(ctx *fasthttp.RequestCtx) {
		setRequestID(ctx)
		if s.cfg.MetricsToken != "" && !bearerMatches(ctx.Request.Header.Peek("Authorization"), s.cfg.MetricsToken) {
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="metrics"`)
			s.writeError(ctx, engine.Errorf(engine.CodeUnauthorized, "/metrics needs Authorization: Bearer <the server's metrics token>"))
			return
		}
		h(ctx)
	}
}

// bearerMatches compares in constant time; hashing first makes the time independent of the
// length of the token as well.
func bearerMatches(header []byte, token string) bool {
	const scheme = "bearer "
	if len(header) < len(scheme) || !strings.EqualFold(string(header[:len(scheme)]), scheme) {
		return false
	}
	got, want := sha256.Sum256(header[len(scheme):]), sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// conversationsCollector reads the per-status counts the engine keeps in step with every write,
// at scrape time, so the gauge can never drift from the database.
type conversationsCollector struct {
	db   *engine.DB
	desc *prometheus.Desc
}

func (c conversationsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c conversationsCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.db.CountByStatus()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, s := range engine.Statuses {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
}

// methodLabel bounds the method label to the standard methods: any client can send any token as
// a method, and each distinct label value would be a new series kept forever.
func methodLabel(m []byte) string {
	// The constants, not string(m): a label of every request must not allocate.
	switch string(m) {
	case "GET":
		return "GET"
	case "HEAD":
		return "HEAD"
	case "POST":
		return "POST"
	case "PUT":
		return "PUT"
	case "PATCH":
		return "PATCH"
	case "DELETE":
		return "DELETE"
	case "OPTIONS":
		return "OPTIONS"
	case "CONNECT":
		return "CONNECT"
	case "TRACE":
		return "TRACE"
	}
	return "other"
}

// feedCollector reports each event-feed consumer's lag and drops at scrape time. Consumer names
// are fixed by the code (the hub, the webhook workers), so the label is bounded.
type feedCollector struct {
	db           *engine.DB
	lag, dropped *prometheus.Desc
}

func (c feedCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lag
	ch <- c.dropped
}

func (c feedCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.db.FeedStats() {
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(st.Lag), st.Name)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.Dropped), st.Name)
	}
}
