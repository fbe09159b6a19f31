package main

import (
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/valyala/fasthttp"
)

// TestWidgetFloodStaysInTheOrgWindow: however many conversations the public widget key opens,
// the org's visitor traffic (the opens and every visitor token's posts together) gets at most
// burst + rate×seconds requests through. The limiter's clock stands still, so the bound is exact:
// the flood must get exactly that many through, and everything else is a 429 that stores nothing.
func TestWidgetFloodStaysInTheOrgWindow(t *testing.T) {
	ts := newTestServer(t)
	clock := stopLimiterClock(ts)
	const (
		rate, burst = 10, 20
		flooders    = 8
		perFlooder  = 40 // requests, so each phase sends 320, far over the window
	)
	org := ts.newOrg(t, rate, burst)
	other := ts.newOrg(t, 1, 1)

	phase := func() (opened, posted int, convs []string) {
		t.Helper()
		type tally struct {
			opened, posted int
			convs          []string
			err            error
		}
		results := make(chan tally, flooders)
		for range flooders {
			go func() {
				var got tally
				defer func() { results <- got }()
				var token, path string
				for range perFlooder {
					if token == "" {
						r, err := ts.try("POST", "/widget/conversations", org.WidgetKey, `{}`)
						if err != nil || (r.Status != 201 && r.Status != 429) {
							got.err = fmt.Errorf("open: %d %v %s", r.Status, err, r.Body)
							return
						}
						if r.Status == 429 {
							continue
						}
						var c engine.CreatedConversation
						if err := json.Unmarshal(r.Body, &c); err != nil {
							got.err = err
							return
						}
						got.opened++
						got.convs = append(got.convs, c.Conversation.ID)
						token, path = c.VisitorToken, "/widget/conversations/"+c.Conversation.ID+"/messages"
						continue
					}
					r, err := ts.try("POST", path, token, `{"text":"flood"}`)
					if err != nil || (r.Status != 201 && r.Status != 429) {
						got.err = fmt.Errorf("post: %d %v %s", r.Status, err, r.Body)
						return
					}
					if r.Status == 201 {
						got.posted++
					}
				}
			}()
		}
		deadline := time.After(30 * time.Second)
		for range flooders {
			select {
			case got := <-results:
				if got.err != nil {
					t.Fatal(got.err)
				}
				opened, posted, convs = opened+got.opened, posted+got.posted, append(convs, got.convs...)
			case <-deadline:
				t.Fatal("the flood did not finish within 30 s")
			}
		}
		return opened, posted, convs
	}
	stored := func(convs []string) int {
		t.Helper()
		n := 0
		for _, id := range convs {
			msgs, _, err := ts.db.ListMessages(org.OrgID, id, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			n += len(msgs)
		}
		return n
	}

	opened, posted, convs := phase()
	if opened+posted != burst || opened == 0 {
		t.Fatalf("with no time passing the flood got %d opens and %d posts through, want %d in all", opened, posted, burst)
	}
	if n := stored(convs); n != posted {
		t.Fatalf("%d messages stored for %d posts answered 201", n, posted)
	}
	mustStatus(t, ts.do(t, "GET", "/conversations", other.APIKey, nil), 200) // another org's window is untouched

	const seconds = 2
	clock.Advance(seconds * time.Second)
	opened2, posted2, convs2 := phase()
	if got := opened + posted + opened2 + posted2; got != burst+rate*seconds {
		t.Fatalf("after %d s the flood had %d requests through, want burst + rate×seconds = %d", seconds, got, burst+rate*seconds)
	}
	if n := stored(append(convs, convs2...)); n != posted+posted2 {
		t.Fatalf("%d messages stored for %d posts answered 201", n, posted+posted2)
	}
}

// BenchmarkWidgetFlood measures what the public widget key alone gets through an org's window of
// 50/s (burst 100): flooders post round-robin through visitor tokens the widget key handed out,
// while the team of another org posts one message at a time. It reports the flooded org's
// visitor messages per second and the other org's p99 post latency, idle and during the flood.
// The flood is run unpaced (each flooder sends as soon as it has its answer, so cheap refusals
// mean more requests) and paced at a fixed offered rate (the same requests whatever the
// answers). One run takes about 2×floodFor per case; use -benchtime 1x.
func BenchmarkWidgetFlood(b *testing.B) {
	for _, offered := range []int{0, 2000} {
		name := "unpaced"
		if offered > 0 {
			name = fmt.Sprintf("offered=%d/s", offered)
		}
		b.Run(name, func(b *testing.B) { benchmarkWidgetFlood(b, offered) })
	}
}

func benchmarkWidgetFlood(b *testing.B, offered int) {
	const (
		flooders = 32
		perFlood = 10 // visitor tokens per flooder, 320 in all, as in the reported attack
		floodFor = 3 * time.Second
	)
	var interval time.Duration // between one flooder's requests; 0: none
	if offered > 0 {
		interval = time.Second * flooders / time.Duration(offered)
	}
	for range b.N {
		ts := newTestServer(b)
		target := ts.newOrg(b, 50, 100)
		other := ts.newOrg(b, 0, 0)
		otherConv := ts.conversationIn(b, other.APIKey, engine.StatusOpen)
		client := &fasthttp.HostClient{Addr: ts.URL[len("http://"):], MaxConns: 4 * flooders,
			Dial: func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }}

		// Collecting the tokens through the widget key would itself wait on the window; an
		// attacker collects them ahead, so they are made here outside the measurement.
		tokens := make([][]engine.CreatedConversation, flooders)
		for i := range tokens {
			for range perFlood {
				opened, _, err := ts.db.CreateConversation(b.Context(), target.OrgID, engine.NewConversation{}, nil)
				if err != nil {
					b.Fatal(err)
				}
				tokens[i] = append(tokens[i], opened)
			}
		}

		idle := teamLatencies(client, ts.URL, other.APIKey, otherConv, time.Now().Add(floodFor))

		stop := time.Now().Add(floodFor)
		var posted, refused atomic.Int64
		var wg sync.WaitGroup
		for i := range flooders {
			wg.Go(func() { floodVisitorTokens(client, ts.URL, tokens[i], interval, stop, &posted, &refused) })
		}
		start := time.Now()
		during := teamLatencies(client, ts.URL, other.APIKey, otherConv, stop)
		wg.Wait()
		elapsed := time.Since(start).Seconds()

		b.ReportMetric(float64(posted.Load())/elapsed, "visitor-msgs/s")
		b.ReportMetric(float64(refused.Load())/elapsed, "429s/s")
		b.ReportMetric(p99(idle).Seconds()*1000, "other-p99-idle-ms")
		b.ReportMetric(p99(during).Seconds()*1000, "other-p99-flood-ms")
	}
}

// floodVisitorTokens posts through each conversation's visitor token in turn until stop, one
// request every interval (0: as fast as the answers come).
func floodVisitorTokens(client *fasthttp.HostClient, base string, convs []engine.CreatedConversation, interval time.Duration, stop time.Time, posted, refused *atomic.Int64) {
	req, res := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(res)
	next := time.Now()
	for i := 0; time.Now().Before(stop); i++ {
		if interval > 0 { // pacing the load generator, not waiting on the server
			next = next.Add(interval)
			time.Sleep(time.Until(next))
		}
		c := convs[i%len(convs)]
		req.Reset()
		req.Header.SetMethod("POST")
		req.SetRequestURI(base + "/widget/conversations/" + c.Conversation.ID + "/messages")
		req.Header.Set("Authorization", "Bearer "+c.VisitorToken)
		req.SetBodyString(`{"text":"hello?"}`)
		switch err := client.Do(req, res); {
		case err != nil:
		case res.StatusCode() == 201:
			posted.Add(1)
		case res.StatusCode() == 429:
			refused.Add(1)
		}
	}
}

// teamLatencies posts to convID one message at a time until stop and returns each latency.
func teamLatencies(client *fasthttp.HostClient, base, apiKey, convID string, stop time.Time) []time.Duration {
	req, res := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(res)
	var out []time.Duration
	for time.Now().Before(stop) {
		req.Reset()
		req.Header.SetMethod("POST")
		req.SetRequestURI(base + "/conversations/" + convID + "/messages")
		req.Header.Set("Authorization", "Bearer "+apiKey)
		req.SetBodyString(`{"text":"a reply of ordinary length"}`)
		start := time.Now()
		if err := client.Do(req, res); err == nil && res.StatusCode() == 201 {
			out = append(out, time.Since(start))
		}
	}
	return out
}

func p99(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[(len(d)*99)/100]
}
