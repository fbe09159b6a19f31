package main

import (
	"slices"
	"time"

	"github.com/awardee/awardee/rt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// realtimeCollector reads the hub's standing once per scrape. Kinds are the principal kinds the
// hub accepts, so the label is bounded; nothing is counted per org.
type realtimeCollector struct {
	hub                                                     *rt.Hub
	conns, frames, slow, fellBehind, replayed, authFailures *prometheus.Desc
}

func newRealtimeCollector(h *rt.Hub) realtimeCollector {
	return realtimeCollector{hub: h,
		conns:        prometheus.NewDesc("awardee_realtime_connections", "Open /realtime WebSockets by principal kind (api, visitor, and unauthenticated while the auth frame is awaited).", []string{"kind"}, nil),
		frames:       prometheus.NewDesc("awardee_realtime_frames_sent_total", "Frames written to /realtime WebSockets.", nil, nil),
		slow:         prometheus.NewDesc("awardee_realtime_slow_consumer_closes_total", "WebSockets closed with 4008 because their send queue was full.", nil, nil),
		fellBehind:   prometheus.NewDesc("awardee_realtime_fell_behind_total", "Times the hub fell behind the event feed and closed its WebSockets with 4008 so they resume.", nil, nil),
		replayed:     prometheus.NewDesc("awardee_realtime_replayed_events_total", "Events sent from the log to WebSockets that resumed.", nil, nil),
		authFailures: prometheus.NewDesc("awardee_realtime_auth_failures_total", "WebSockets closed with 4001: a bad token or none within the auth timeout.", nil, nil),
	}
}

func (c realtimeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.frames, c.slow, c.fellBehind, c.replayed, c.authFailures} {
		ch <- d
	}
}

func (c realtimeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.hub.Stats()
	kinds := make([]string, 0, len(st.Connections))
	for k := range st.Connections {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(st.Connections[k]), k)
	}
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(st.Unauthenticated), "unauthenticated")
	ch <- prometheus.MustNewConstMetric(c.frames, prometheus.CounterValue, float64(st.FramesSent))
	ch <- prometheus.MustNewConstMetric(c.slow, prometheus.CounterValue, float64(st.SlowConsumerCloses))
	ch <- prometheus.MustNewConstMetric(c.fellBehind, prometheus.CounterValue, float64(st.FellBehind))
	ch <- prometheus.MustNewConstMetric(c.replayed, prometheus.CounterValue, float64(st.ReplayedEvents))
	ch <- prometheus.MustNewConstMetric(c.authFailures, prometheus.CounterValue, float64(st.AuthFailures))
}

// realtime serves GET /realtime: the hub upgrades it; a request that is not a handshake gets
// the contract's error envelope with its request id, like every other answer.
func (s *server) realtime() fasthttp.RequestHandler {
	upgrade := s.hub.Handler()
	return func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		setRequestID(ctx)
		upgrade(ctx)
		if ctx.Response.StatusCode() != fasthttp.StatusSwitchingProtocols {
			s.metrics.observe("/realtime", ctx, start)
		}
	}
}
