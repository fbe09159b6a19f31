package main

import (
	"fmt"
	"math"
	"net"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/awardee/awardee/bench/ceiling"
	"github.com/awardee/awardee/engine"
	"github.com/valyala/fasthttp"
)

// benchmarkPost measures POST /conversations/{id}/messages against the real server over loopback
// with 64 concurrent clients; withKey adds a unique Idempotency-Key to every request, so the
// difference between the two benchmarks is the cost of the idempotency path. prepare runs
// before the clock starts (to register webhooks, say).
func benchmarkPost(b *testing.B, withKey bool, prepare ...func(*testServer, testOrg)) {
	withServerGC(b)
	ts := newTestServer(b, allowPrivate) // for receivers on 127.0.0.1; the posts fetch nothing
	org := ts.newOrg(b, 0, 0)
	for _, p := range prepare {
		p(ts, org)
	}
	convs := make([]string, 64)
	for i := range convs {
		convs[i] = ts.conversationIn(b, org.APIKey, engine.StatusOpen)
	}
	client := &fasthttp.HostClient{Addr: ts.URL[len("http://"):], MaxConns: 256,
		Dial: func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }}
	b.SetParallelism(int(math.Ceil(64 / float64(runtime.GOMAXPROCS(0)))))
	var n, failures atomic.Int64
	run := time.Now().UnixNano()
	cpuBefore, commitsBefore := processCPU(b), ts.db.CommitStats()
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
	cpu, commits := processCPU(b)-cpuBefore, ts.db.CommitStats()
	if f := failures.Load(); f > 0 {
		b.Fatalf("%d posts failed", f)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "posts/s")
	// The clients share the process: this is the server's CPU per post plus theirs, an upper
	// bound that moves with the server's.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/post")
	if n := commits.Batches - commitsBefore.Batches; n > 0 {
		b.ReportMetric(float64(commits.Units-commitsBefore.Units)/float64(n), "units/batch")
	}
}

// withServerGC gives the benchmark's process the collector settings the server's binary starts
// with (main.go), so that the figures are those of the server as it runs, and restores the
// test binary's own afterwards.
func withServerGC(b *testing.B) {
	percent := debug.SetGCPercent(100)
	debug.SetGCPercent(percent)
	limit := debug.SetMemoryLimit(-1)
	setGCDefaults()
	b.Cleanup(func() {
		debug.SetGCPercent(percent)
		debug.SetMemoryLimit(limit)
	})
}

// processCPU is the user and system CPU time the process has used so far.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkPostMessageHTTP(b *testing.B) { benchmarkPost(b, false) }

// BenchmarkPostVsCeiling posts the same closed-loop load (64 connections, 32 conversations, the
// text of BenchmarkPostMessageHTTP) to the server and to two reference servers of bench/ceiling
// on the same disk: one-row (one row per post, group commit) and post-rows (the rows a post
// writes, in the same loop). Each iteration is one round of a short slice against each in turn,
// so a neighbour's load on a shared machine weighs on all three alike; it reports the server's
// posts as a share of each reference's. Run it with -benchtime Nx: N rounds.
func BenchmarkPostVsCeiling(b *testing.B) {
	withServerGC(b)
	ts := newTestServer(b)
	org := ts.newOrg(b, 0, 0)
	convs := make([]string, 32)
	for i := range convs {
		convs[i] = ts.conversationIn(b, org.APIKey, engine.StatusOpen)
	}
	type target struct {
		name, url, key string
		posts          int64
	}
	targets := []*target{{name: "awardee", url: ts.URL, key: org.APIKey}}
	for _, ref := range []struct {
		name  string
		start func(string) (string, func() error, error)
	}{{"one-row", ceiling.StartOneRow}, {"post-rows", ceiling.StartPostRows}} {
		url, stop, err := ref.start(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { stop() })
		targets = append(targets, &target{name: ref.name, url: url})
	}
	const slice = 500 * time.Millisecond
	var failures atomic.Int64
	load := func(t *target) {
		client := &fasthttp.HostClient{Addr: t.url[len("http://"):], MaxConns: 64,
			Dial: func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }}
		defer client.CloseIdleConnections()
		end := time.Now().Add(slice)
		var posts atomic.Int64
		var wg sync.WaitGroup
		for w := range 64 {
			wg.Go(func() {
				req, res := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(res)
				for i := w; time.Now().Before(end); i += 64 {
					req.Reset()
					req.Header.SetMethod("POST")
					req.SetRequestURI(t.url + "/conversations/" + convs[i%len(convs)] + "/messages")
					req.Header.Set("Authorization", "Bearer "+t.key)
					req.SetBodyString(`{"text":"a reply of ordinary length, about sixty-four characters"}`)
					if err := client.Do(req, res); err != nil || res.StatusCode() != 201 {
						failures.Add(1)
						continue
					}
					posts.Add(1)
				}
			})
		}
		wg.Wait()
		t.posts += posts.Load()
	}
	b.ResetTimer()
	for range b.N {
		for _, t := range targets {
			load(t)
		}
	}
	b.StopTimer()
	if f := failures.Load(); f > 0 {
		b.Fatalf("%d posts failed", f)
	}
	seconds := float64(b.N) * slice.Seconds()
	for _, t := range targets {
		b.ReportMetric(float64(t.posts)/seconds, t.name+"-posts/s")
	}
	for _, t := range targets[1:] {
		b.ReportMetric(float64(targets[0].posts)/float64(t.posts), "awardee/"+t.name)
	}
}
func BenchmarkPostMessageHTTPIdempotencyKey(b *testing.B) { benchmarkPost(b, true) }

// BenchmarkQuietOrgDuringFlood measures what one org's flood costs another: many clients of one
// org post as fast as they can while one client of a second org posts one message at a time.
// It reports the quiet org's latency percentiles and the flood's rate. With more flood clients
// than a batch holds (1,024), a first-come queue would put the quiet org behind the whole backlog.
func BenchmarkQuietOrgDuringFlood(b *testing.B) {
	for _, clients := range []int{128, 1536} {
		b.Run(fmt.Sprintf("flood=%d", clients), func(b *testing.B) { benchmarkQuietOrg(b, clients) })
	}
}

func benchmarkQuietOrg(b *testing.B, floodClients int) {
	ts := newTestServer(b)
	flood, quiet := ts.newOrg(b, 0, 0), ts.newOrg(b, 0, 0)
	floodConvs := make([]string, 32)
	for i := range floodConvs {
		floodConvs[i] = ts.conversationIn(b, flood.APIKey, engine.StatusOpen)
	}
	quietConv := ts.conversationIn(b, quiet.APIKey, engine.StatusOpen)
	client := &fasthttp.HostClient{Addr: ts.URL[len("http://"):], MaxConns: floodClients + 16,
		Dial: func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }}
	post := func(key, conv string) error {
		req, res := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(res)
		req.Header.SetMethod("POST")
		req.SetRequestURI(ts.URL + "/conversations/" + conv + "/messages")
		req.Header.Set("Authorization", "Bearer "+key)
		req.SetBodyString(`{"text":"a reply of ordinary length, about sixty-four characters"}`)
		if err := client.Do(req, res); err != nil {
			return err
		}
		if res.StatusCode() != 201 {
			return fmt.Errorf("status %d", res.StatusCode())
		}
		return nil
	}
	stop := make(chan struct{})
	var floodPosts, failures atomic.Int64
	var wg sync.WaitGroup
	for w := range floodClients {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if post(flood.APIKey, floodConvs[(w+i)%len(floodConvs)]) != nil {
					failures.Add(1)
				}
				floodPosts.Add(1)
			}
		})
	}
	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := post(quiet.APIKey, quietConv); err != nil {
			b.Fatal(err)
		}
		latencies = append(latencies, time.Since(start))
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	if f := failures.Load(); f > 0 {
		b.Fatalf("%d flood posts failed", f)
	}
	slices.Sort(latencies)
	at := func(q float64) float64 {
		return float64(latencies[int(q*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.5), "quiet-p50-ms")
	b.ReportMetric(at(0.99), "quiet-p99-ms")
	b.ReportMetric(float64(floodPosts.Load())/b.Elapsed().Seconds(), "flood-posts/s")
}
