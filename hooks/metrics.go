package hooks

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// serviceMetrics are the package's series. None carries an org or an endpoint: /metrics is
// readable by whoever runs the server, and endpoint ids are unbounded.
type serviceMetrics struct {
	deliveries *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	oldest     prometheus.Collector
}

func newServiceMetrics(s *Service) *serviceMetrics {
	return &serviceMetrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "awardee_webhook_deliveries_total",
			Help: "Webhook attempts by the outcome they left the delivery in: succeeded, pending (a retry is scheduled) or failed (the schedule is spent).",
		}, []string{"outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "awardee_webhook_attempt_duration_seconds",
			Help:    "Webhook attempt latency, by whether the receiver answered 2xx in time.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15},
		}, []string{"result"}),
		oldest: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "awardee_webhook_oldest_owed_age_seconds",
			Help: "Age of the oldest event some endpoint is still owed (not yet sent, or pending a retry); 0 when none is owed.",
		}, func() float64 {
			at, found, err := s.oldestOwed()
			if err != nil || !found {
				return 0
			}
			return max(0, s.opts.Now().Sub(at).Seconds())
		}),
	}
}

func (m *serviceMetrics) delivered(outcome string) { m.deliveries.WithLabelValues(outcome).Inc() }

func (m *serviceMetrics) attempted(latency time.Duration, ok bool) {
	result := "error"
	if ok {
		result = "success"
	}
	m.latency.WithLabelValues(result).Observe(latency.Seconds())
}

// Collectors are the package's metrics, for the server's registry.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.m.deliveries, s.m.latency, s.m.oldest}
}
