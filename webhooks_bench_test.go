package main

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
)

// BenchmarkPostMessageHTTP3Webhooks is BenchmarkPostMessageHTTP with three endpoints registered
// for every event, on receivers that answer at once: the ratio of the two is what webhooks cost
// the post path (they share the machine and the commit loop with it).
// It also reports the deliveries made meanwhile, to show the workers were busy.
func BenchmarkPostMessageHTTP3Webhooks(b *testing.B) {
	var delivered atomic.Int64
	benchmarkPost(b, false, func(ts *testServer, org testOrg) {
		for range 3 {
			rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				delivered.Add(1)
				w.WriteHeader(http.StatusNoContent)
			}))
			b.Cleanup(rcv.Close)
			mustStatus(b, ts.do(b, "POST", "/webhooks", org.APIKey, map[string]any{"url": rcv.URL}), 201)
		}
	})
	b.ReportMetric(float64(delivered.Load())/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkWebhookDelivery measures one endpoint's delivery rate to a local receiver: b.N events
// are committed while the receiver holds the first request, then the clock runs from its
// release until the last event is received.
func BenchmarkWebhookDelivery(b *testing.B) {
	ts := newTestServer(b, allowPrivate)
	org := ts.newOrg(b, 0, 0)
	var received atomic.Int64
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	b.Cleanup(open)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-gate
		received.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(rcv.Close)
	mustStatus(b, ts.do(b, "POST", "/webhooks", org.APIKey, map[string]any{"url": rcv.URL}), 201)
	conv := ts.conversationIn(b, org.APIKey, engine.StatusOpen)
	var wg sync.WaitGroup
	var failures atomic.Int64
	var next atomic.Int64
	for range 32 {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				r, err := ts.try("POST", "/conversations/"+conv+"/messages", org.APIKey, `{"text":"an ordinary reply"}`)
				if err != nil || r.Status != 201 {
					failures.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if f := failures.Load(); f > 0 {
		b.Fatalf("%d posts failed", f)
	}
	b.ResetTimer()
	open()
	deadline := time.Now().Add(5 * time.Minute)
	for received.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d events delivered", received.Load(), b.N)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
