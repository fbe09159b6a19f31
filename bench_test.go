package main

import (
	"fmt"
	"math"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/valyala/fasthttp"
)

// benchmarkPost measures POST /conversations/{id}/messages against the real server over loopback
// with 64 concurrent clients; withKey adds a unique Idempotency-Key to every request, so the
// difference between the two benchmarks is the cost of the idempotency path.
func benchmarkPost(b *testing.B, withKey bool) {
	ts := newTestServer(b)
	org := ts.newOrg(b, 0, 0)
	convs := make([]string, 64)
	for i := range convs {
		convs[i] = ts.conversationIn(b, org.APIKey, engine.StatusOpen)
	}
	client := &fasthttp.HostClient{Addr: ts.URL[len("http://"):], MaxConns: 256,
		Dial: func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }}
	b.SetParallelism(int(math.Ceil(64 / float64(runtime.GOMAXPROCS(0)))))
	var n, failures atomic.Int64
	run := time.Now().UnixNano()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, res := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(res)
		for pb.Next() {
			i := n.Add(1)
			req.Reset()
			req.Header.SetMethod("POST")
			req.SetRequestURI(ts.URL + "/conversations/" + convs[i%int64(len(convs))] + "/messages")
			req.Header.Set("Authorization", "Bearer "+org.APIKey)
			if withKey {
				req.Header.Set("Idempotency-Key", fmt.Sprintf("bench-%d-%d", run, i))
			}
			req.SetBodyString(`{"text":"a reply of ordinary length, about sixty-four characters"}`)
			if err := client.Do(req, res); err != nil || res.StatusCode() != 201 {
				failures.Add(1)
			}
		}
	})
	b.StopTimer()
	if f := failures.Load(); f > 0 {
		b.Fatalf("%d posts failed", f)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "posts/s")
}

func BenchmarkPostMessageHTTP(b *testing.B)               { benchmarkPost(b, false) }
func BenchmarkPostMessageHTTPIdempotencyKey(b *testing.B) { benchmarkPost(b, true) }
