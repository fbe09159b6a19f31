// Package load is Awardee's load generator: it opens conversations on a running server and posts
// agent replies into them from many concurrent clients, for a bounded count and time, and reports
// throughput and the latency distribution (HDR histogram, so tail percentiles are exact to three
// significant digits rather than bucket guesses).
package load

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/valyala/fasthttp"
)

// Config is one load run. Requests and Duration both bound it: it stops at whichever comes first.
type Config struct {
	URL           string
	APIKey        string
	Conversations int
	Concurrency   int
	Requests      int
	Duration      time.Duration
	TextSize      int
	Idempotency   bool // send a unique Idempotency-Key with every post

	// Mode is post (the default: posts from many clients), realtime (WebSocket subscribers and
	// the 201-to-frame latency) or idle (idle WebSockets and the server's memory per connection).
	Mode        string
	Subscribers int           // realtime: WebSocket subscribers of the org
	Rate        float64       // realtime: posts per second
	Connections int           // idle: WebSockets to open
	ServerPID   int           // idle: the server whose RSS to read; 0 reads this process's own
	Settle      time.Duration // idle: how long the connections stay idle before the second reading
}

// DefaultConfig is what `awardee bench` runs without flags.
func DefaultConfig() Config {
	return Config{
		URL: "http://127.0.0.1:8080", Conversations: 64, Concurrency: 64,
		Requests: 50_000, Duration: 30 * time.Second, TextSize: 64,
		Mode: "post", Subscribers: 100, Rate: 20, Connections: 1000, Settle: 3 * time.Second,
	}
}

// BindFlags binds every field of c to fs; AWARDEE_BENCH_* variables are not read: a load run
// should say what it does on its command line.
func BindFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.URL, "url", c.URL, "base URL of the server")
	fs.StringVar(&c.APIKey, "key", c.APIKey, "API key (ak_…) of the org to load; its rate window must allow the load")
	fs.IntVar(&c.Conversations, "conversations", c.Conversations, "conversations to open and post into")
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "concurrent clients")
	fs.IntVar(&c.Requests, "requests", c.Requests, "posts to send at most")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "how long to post at most")
	fs.IntVar(&c.TextSize, "text-size", c.TextSize, "characters per message")
	fs.BoolVar(&c.Idempotency, "idempotency", c.Idempotency, "send an Idempotency-Key with every post")
	fs.StringVar(&c.Mode, "mode", c.Mode, "post, realtime (subscribers, rate: 201-to-frame latency) or idle (connections, server-pid: RSS per idle WebSocket)")
	fs.IntVar(&c.Subscribers, "subscribers", c.Subscribers, "realtime: WebSocket subscribers of the org")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "realtime: posts per second (bounded by --requests and --duration)")
	fs.IntVar(&c.Connections, "connections", c.Connections, "idle: WebSockets to open (one visitor conversation each)")
	fs.IntVar(&c.ServerPID, "server-pid", c.ServerPID, "idle: PID of the server whose RSS is read from /proc; 0 reads this process")
	fs.DurationVar(&c.Settle, "settle", c.Settle, "idle: how long the connections stay idle before the RSS is read again")
}

// Result is what a run measured.
type Result struct {
	Sent, OK   int64
	ByStatus   map[int]int64
	Errors     int64 // transport errors
	Elapsed    time.Duration
	Latency    *hdrhistogram.Histogram // microseconds, successful posts only
	Throughput float64                 // successful posts per second
}

// Run opens the conversations, then posts until the count or the time is spent or ctx ends.
func Run(ctx context.Context, c Config) (*Result, error) {
	if c.APIKey == "" {
		return nil, errors.New("an API key is required (--key ak_…)")
	}
	if c.Concurrency < 1 || c.Conversations < 1 || c.Requests < 1 || c.Duration <= 0 {
		return nil, errors.New("concurrency, conversations, requests and duration must be positive")
	}
	base, err := url.Parse(c.URL)
	if err != nil || base.Host == "" {
		return nil, fmt.Errorf("bad --url %q", c.URL)
	}
	client := &fasthttp.HostClient{Addr: base.Host, MaxConns: c.Concurrency * 2, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	prefix := strings.TrimRight(c.URL, "/")
	convs := make([]string, c.Conversations)
	for i := range convs {
		status, body, err := do(client, "POST", prefix+"/conversations", c.APIKey, "", []byte(`{"status":"open"}`))
		if err != nil || status != 201 {
			return nil, fmt.Errorf("opening conversation %d: status %d %v %s", i, status, err, body)
		}
		var out struct {
			Conversation struct {
				ID string `json:"id"`
			} `json:"conversation"`
		}
		if err := json.Unmarshal(body, &out); err != nil {
			return nil, err
		}
		convs[i] = out.Conversation.ID
	}
	text := strings.Repeat("x", max(1, c.TextSize))
	body := []byte(`{"text":"` + text + `"}`)

	ctx, cancel := context.WithTimeout(ctx, c.Duration)
	defer cancel()
	var next atomic.Int64
	res := &Result{ByStatus: map[int]int64{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for w := range c.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hist := hdrhistogram.New(1, 60_000_000, 3)
			statuses := map[int]int64{}
			var transport int64
			for ctx.Err() == nil {
				n := next.Add(1)
				if n > int64(c.Requests) {
					break
				}
				conv := convs[(int(n)+w)%len(convs)]
				idem := ""
				if c.Idempotency {
					idem = fmt.Sprintf("bench-%d-%d", start.UnixNano(), n)
				}
				t0 := time.Now()
				status, _, err := do(client, "POST", prefix+"/conversations/"+conv+"/messages", c.APIKey, idem, body)
				if err != nil {
					transport++
					continue
				}
				statuses[status]++
				if status == 201 {
					hist.RecordValue(time.Since(t0).Microseconds())
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if res.Latency == nil {
				res.Latency = hdrhistogram.New(1, 60_000_000, 3)
			}
			res.Latency.Merge(hist)
			for s, k := range statuses {
				res.ByStatus[s] += k
				res.Sent += k
			}
			res.Errors += transport
			res.Sent += transport
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.OK = res.ByStatus[201]
	res.Throughput = float64(res.OK) / res.Elapsed.Seconds()
	return res, nil
}

func do(client *fasthttp.HostClient, method, uri, key, idem string, body []byte) (int, []byte, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.SetContentType("application/json")
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	req.SetBody(body)
	if err := client.Do(req, resp); err != nil {
		return 0, nil, err
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...), nil
}

// Report prints r for people.
func (r *Result) Report(w io.Writer, c Config) {
	fmt.Fprintf(w, "posted %d messages (%d sent) in %.2fs with %d clients over %d conversations: %.0f messages/s\n",
		r.OK, r.Sent, r.Elapsed.Seconds(), c.Concurrency, c.Conversations, r.Throughput)
	if r.Latency != nil && r.Latency.TotalCount() > 0 {
		ms := func(q float64) float64 { return float64(r.Latency.ValueAtQuantile(q)) / 1000 }
		fmt.Fprintf(w, "latency ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n",
			ms(50), ms(90), ms(99), ms(99.9), float64(r.Latency.Max())/1000)
	}
	codes := make([]int, 0, len(r.ByStatus))
	for s := range r.ByStatus {
		codes = append(codes, s)
	}
	sort.Ints(codes)
	for _, s := range codes {
		fmt.Fprintf(w, "status %d: %d\n", s, r.ByStatus[s])
	}
	if r.Errors > 0 {
		fmt.Fprintf(w, "transport errors: %d\n", r.Errors)
	}
}

// Main is the whole command, shared by `awardee bench` and `go run ./bench`.
func Main(ctx context.Context, args []string, stdout io.Writer) error {
	c := DefaultConfig()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	BindFlags(fs, &c)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch c.Mode {
	case "realtime":
		res, err := RunRealtime(ctx, c)
		if err != nil {
			return err
		}
		res.Report(stdout, c)
		return nil
	case "idle":
		res, err := RunIdle(ctx, c)
		if err != nil {
			return err
		}
		res.Report(stdout, c)
		return nil
	case "post", "":
	default:
		return fmt.Errorf("unknown --mode %q: post, realtime or idle", c.Mode)
	}
	res, err := Run(ctx, c)
	if err != nil {
		return err
	}
	res.Report(stdout, c)
	return nil
}
