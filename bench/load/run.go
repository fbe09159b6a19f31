package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/awardee/awardee/bench/ceiling"
	"github.com/valyala/fasthttp"
)

// Result is what one run against one server measured.
type Result struct {
	// Target names the server: awardee, or a reference server of package ceiling.
	Target      string  `json:"target"`
	URL         string  `json:"url"`
	Mix         string  `json:"mix"`
	Loop        string  `json:"loop"` // closed or open
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"rate,omitempty"` // open loop: posts due per second
	Rounds      int     `json:"rounds"`         // runs summed in this result (--rounds)

	// Sent counts every post sent: each is answered with a status (in ByStatus) or failed in
	// transport (TransportErrors), so Sent is their sum.
	Sent            int64            `json:"sent"`
	OK              int64            `json:"ok"` // 2xx answers
	ByStatus        map[string]int64 `json:"by_status"`
	ByCode          map[string]int64 `json:"errors_by_code"` // "429 rate_limited": every non-2xx by status and the envelope's code
	TransportErrors int64            `json:"transport_errors"`
	FirstTransport  string           `json:"first_transport_error,omitempty"`
	// Late counts open-loop posts sent more than a millisecond after they were due: every
	// connection was waiting for an answer. Their latency counts from when they were due.
	Late       int64       `json:"late"`
	Elapsed    float64     `json:"elapsed_seconds"` // summed over the rounds
	Throughput float64     `json:"ok_per_second"`
	Latency    Percentiles `json:"latency_ms"` // of the 2xx answers

	// Histogram holds the 2xx latencies in microseconds.
	Histogram *hdrhistogram.Histogram `json:"-"`
}

// Percentiles of a latency distribution, in milliseconds.
type Percentiles struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99.9"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func percentiles(h *hdrhistogram.Histogram) Percentiles {
	if h.TotalCount() == 0 {
		return Percentiles{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Percentiles{P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max()), Mean: h.Mean() / 1000}
}

// Report is a whole bench: the run against the server and, with --ceiling, against each
// reference server, with the server's throughput as a share of each reference's.
type Report struct {
	Runs []*Result `json:"runs"`
	// Ratios are "awardee/<reference>": the server's 2xx per second over the reference's.
	Ratios map[string]float64 `json:"ratios,omitempty"`
}

// Run runs c against its server and, with c.Ceiling, the same load against each reference
// server in a temporary directory inside c.Dir, one after the other. With c.Rounds above one it
// does so again, the order reversed every other round so that no target always runs on a
// warmer or a busier machine, and each target's result sums its rounds.
func Run(ctx context.Context, c Config) (_ *Report, err error) {
	if c.Ceiling && c.Mix != "text" {
		return nil, fmt.Errorf("--ceiling compares the text mix only: the reference servers neither fetch attachments nor serve /widget (got --mix %s)", c.Mix)
	}
	var fixtures *fixtureServer
	if c.Mix == "attachments" {
		if fixtures, err = startFixtures(); err != nil {
			return nil, err
		}
		defer fixtures.close()
	}
	type target struct {
		name string
		cfg  Config
	}
	targets := []target{{"awardee", c}}
	if c.Ceiling {
		dir, dirErr := ceiling.TempDir(c.Dir)
		if dirErr != nil {
			return nil, dirErr
		}
		defer os.RemoveAll(dir)
		for _, ref := range ceiling.References {
			sub := filepath.Join(dir, ref.Name)
			if mkErr := os.Mkdir(sub, 0o700); mkErr != nil {
				return nil, mkErr
			}
			url, stop, startErr := ref.Start(sub)
			if startErr != nil {
				return nil, fmt.Errorf("starting the %s reference server: %w", ref.Name, startErr)
			}
			defer func() {
				if stopErr := stop(); err == nil && stopErr != nil {
					err = fmt.Errorf("stopping the %s reference server: %w", ref.Name, stopErr)
				}
			}()
			rc := c
			rc.URL, rc.APIKey, rc.Idempotency = url, "reference", false
			targets = append(targets, target{ref.Name, rc})
		}
	}
	results := make([]*Result, len(targets))
	for round := range max(1, c.Rounds) {
		for k := range targets {
			i := k
			if round%2 == 1 {
				i = len(targets) - 1 - k
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			res, err := runOne(ctx, targets[i].cfg, targets[i].name, fixtures)
			if err != nil {
				return nil, err
			}
			if results[i] == nil {
				results[i] = res
			} else {
				results[i].add(res)
			}
		}
	}
	report := &Report{Runs: results}
	if c.Ceiling {
		report.Ratios = map[string]float64{}
		for _, res := range results[1:] {
			if res.Throughput > 0 {
				report.Ratios[results[0].Target+"/"+res.Target] = results[0].Throughput / res.Throughput
			}
		}
	}
	return report, nil
}

// add sums another round's result into res.
func (res *Result) add(o *Result) {
	res.Rounds += o.Rounds
	res.Sent += o.Sent
	res.OK += o.OK
	for k, n := range o.ByStatus {
		res.ByStatus[k] += n
	}
	for k, n := range o.ByCode {
		res.ByCode[k] += n
	}
	if res.FirstTransport == "" {
		res.FirstTransport = o.FirstTransport
	}
	res.TransportErrors += o.TransportErrors
	res.Late += o.Late
	res.Elapsed += o.Elapsed
	res.Histogram.Merge(o.Histogram)
	res.Throughput = float64(res.OK) / res.Elapsed
	res.Latency = percentiles(res.Histogram)
}

// runOne opens the conversations, then posts until the count or the time is spent or ctx ends.
// target names the server in the result; fixtures serves the attachments mix's images.
func runOne(ctx context.Context, c Config, target string, fixtures *fixtureServer) (*Result, error) {
	if c.APIKey == "" {
		return nil, errors.New("an API key is required (--key ak_…)")
	}
	if c.Concurrency < 1 || c.Conversations < 1 || c.Requests < 1 || c.Duration <= 0 || c.Rate < 0 {
		return nil, errors.New("concurrency, conversations, requests and duration must be positive, and rate not negative")
	}
	mix := c.Mix
	if mix == "" {
		mix = "text"
	}
	switch mix {
	case "text":
	case "attachments":
		if fixtures == nil {
			return nil, errors.New("the attachments mix needs its fixture server")
		}
	case "visitor":
		if c.WidgetKey == "" {
			return nil, errors.New("the visitor mix needs the org's widget key (--widget-key wk_…)")
		}
	default:
		return nil, fmt.Errorf("unknown --mix %q: text, attachments, visitor or realtime", mix)
	}
	base, err := url.Parse(c.URL)
	if err != nil || base.Host == "" || (base.Scheme != "http" && base.Scheme != "https") {
		return nil, fmt.Errorf("bad --url %q", c.URL)
	}
	client := &fasthttp.HostClient{Addr: hostPort(base), IsTLS: base.Scheme == "https", MaxConns: max(c.Concurrency, 64), MaxConnWaitTimeout: 30 * time.Second,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	prefix := strings.TrimRight(c.URL, "/")
	var convs, tokens []string
	if mix == "visitor" {
		convs, tokens, err = openConversations(client, prefix, "/widget/conversations", c.WidgetKey, `{}`, c.Conversations)
	} else {
		convs, _, err = openConversations(client, prefix, "/conversations", c.APIKey, `{"status":"open"}`, c.Conversations)
	}
	if err != nil {
		return nil, err
	}
	text := strings.Repeat("x", max(1, c.TextSize))
	textBody := []byte(`{"text":"` + text + `"}`)
	// request n's method is always POST; its path, credential and body depend on the mix.
	request := func(n int64) (path, key string, body []byte) {
		i := int(n % int64(len(convs)))
		switch mix {
		case "attachments":
			return "/conversations/" + convs[i] + "/messages", c.APIKey,
				[]byte(`{"text":"` + text + `","attachments":[{"url":"` + fixtures.imageURL(n) + `"}]}`)
		case "visitor":
			// A conversation's posts alternate: the visitor writes, the team answers.
			if (n/int64(len(convs)))%2 == 0 {
				return "/widget/conversations/" + convs[i] + "/messages", tokens[i], textBody
			}
		}
		return "/conversations/" + convs[i] + "/messages", c.APIKey, textBody
	}

	res := &Result{Target: target, URL: c.URL, Mix: mix, Loop: "closed", Concurrency: c.Concurrency, Rounds: 1,
		ByStatus: map[string]int64{}, ByCode: map[string]int64{}, Histogram: newHistogram()}
	var interval time.Duration
	if c.Rate > 0 {
		res.Loop, res.Rate = "open", c.Rate
		interval = time.Duration(float64(time.Second) / c.Rate)
	}
	ctx, cancel := context.WithTimeout(ctx, c.Duration)
	defer cancel()
	var next, sent, answered, ok atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	stopProgress := progress(c.Progress, target, start, &sent, &answered, &ok)
	defer stopProgress()
	for range c.Concurrency {
		wg.Go(func() {
			hist := newHistogram()
			statuses, codes := map[int]int64{}, map[string]int64{}
			var transport, late int64
			var firstTransport string
			timer := time.NewTimer(time.Hour)
			defer timer.Stop()
		posts:
			for ctx.Err() == nil {
				n := next.Add(1) - 1
				if n >= int64(c.Requests) {
					break
				}
				// The closed loop times a post from when it is sent; the open loop from when it
				// was due, so time spent waiting for a free connection is the server's too.
				t0 := time.Now()
				if interval > 0 {
					due := start.Add(time.Duration(n) * interval)
					if wait := time.Until(due); wait > 0 {
						timer.Reset(wait)
						select {
						case <-timer.C:
						case <-ctx.Done():
							break posts
						}
					} else if wait < -time.Millisecond {
						late++
					}
					t0 = due
				}
				path, key, body := request(n)
				idem := ""
				if c.Idempotency {
					idem = "bench-" + strconv.FormatInt(start.UnixNano(), 36) + "-" + strconv.FormatInt(n, 36)
				}
				sent.Add(1)
				status, respBody, err := do(client, "POST", prefix+path, key, idem, body)
				answered.Add(1)
				if err != nil {
					if transport == 0 {
						firstTransport = err.Error()
					}
					transport++
					continue
				}
				statuses[status]++
				if status >= 200 && status < 300 {
					ok.Add(1)
					hist.RecordValue(max(1, time.Since(t0).Microseconds()))
					continue
				}
				codes[strconv.Itoa(status)+" "+errorCode(respBody)]++
			}
			mu.Lock()
			defer mu.Unlock()
			res.merge(hist, statuses, codes, transport, late, firstTransport)
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start).Seconds()
	res.OK = 0
	for s, n := range res.ByStatus {
		if s[0] == '2' {
			res.OK += n
		}
	}
	res.Throughput = float64(res.OK) / res.Elapsed
	res.Latency = percentiles(res.Histogram)
	return res, nil
}

// merge adds one client's counts to res.
func (res *Result) merge(hist *hdrhistogram.Histogram, statuses map[int]int64, codes map[string]int64, transport, late int64, firstTransport string) {
	res.Histogram.Merge(hist)
	for s, n := range statuses {
		res.ByStatus[strconv.Itoa(s)] += n
		res.Sent += n
	}
	for code, n := range codes {
		res.ByCode[code] += n
	}
	if transport > 0 && res.FirstTransport == "" {
		res.FirstTransport = firstTransport
	}
	res.TransportErrors += transport
	res.Sent += transport
	res.Late += late
}

// newHistogram records 1 µs to 60 s at three significant digits.
func newHistogram() *hdrhistogram.Histogram { return hdrhistogram.New(1, 60_000_000, 3) }

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return u.Host + ":443"
	}
	return u.Host + ":80"
}

// errorCode is the envelope's error.code, or "" when the body is not an envelope.
func errorCode(body []byte) string {
	var env struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) != nil {
		return ""
	}
	return env.Error.Code
}

// progress writes a line to w each second until the returned function is called.
func progress(w io.Writer, target string, start time.Time, sent, answered, ok *atomic.Int64) func() {
	if w == nil {
		return func() {}
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var lastOK int64
		last := start
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				k := ok.Load()
				a := answered.Load()
				s := sent.Load()
				fmt.Fprintf(w, "%s %4.0fs: %d sent, %d 2xx, %.0f 2xx/s in the last second, %d errors, %d in flight\n",
					target, now.Sub(start).Seconds(), s, k, float64(k-lastOK)/now.Sub(last).Seconds(), a-k, s-a)
				lastOK, last = k, now
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

// WriteJSON writes r as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Print writes r for people.
func (r *Report) Print(w io.Writer) {
	for _, res := range r.Runs {
		res.Print(w)
	}
	if len(r.Ratios) == 0 {
		return
	}
	fmt.Fprint(w, "throughput ratios:")
	for _, ref := range ceiling.References {
		key := "awardee/" + ref.Name
		if v, ok := r.Ratios[key]; ok {
			fmt.Fprintf(w, "  %s %.2f", key, v)
		}
	}
	fmt.Fprintln(w)
}

// Print writes res for people.
func (res *Result) Print(w io.Writer) {
	loop := fmt.Sprintf("closed loop, %d connections", res.Concurrency)
	if res.Loop == "open" {
		loop = fmt.Sprintf("open loop at %.0f/s, %d connections", res.Rate, res.Concurrency)
	}
	if res.Rounds > 1 {
		loop += fmt.Sprintf(", %d rounds", res.Rounds)
	}
	fmt.Fprintf(w, "%s (%s, %s mix): %d sent, %d 2xx in %.2fs: %.0f 2xx/s\n",
		res.Target, loop, res.Mix, res.Sent, res.OK, res.Elapsed, res.Throughput)
	if l := res.Latency; res.OK > 0 {
		fmt.Fprintf(w, "  latency ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n", l.P50, l.P90, l.P99, l.P999, l.Max)
	}
	for _, line := range sortedCounts("status ", res.ByStatus) {
		fmt.Fprintln(w, "  "+line)
	}
	for _, line := range sortedCounts("error ", res.ByCode) {
		fmt.Fprintln(w, "  "+line)
	}
	if res.TransportErrors > 0 {
		fmt.Fprintf(w, "  transport errors: %d (first: %s)\n", res.TransportErrors, res.FirstTransport)
	}
	if res.Late > 0 {
		fmt.Fprintf(w, "  %d posts went out more than 1 ms late, every connection busy: raise --concurrency for this rate\n", res.Late)
	}
}

func sortedCounts(prefix string, m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	lines := make([]string, len(keys))
	for i, k := range keys {
		lines[i] = fmt.Sprintf("%s%s: %d", prefix, k, m[k])
	}
	return lines
}

// do sends one request and returns its status and a copy of its body.
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
