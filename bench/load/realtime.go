package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// perSource is how many WebSockets the bench opens from one loopback source address: a loopback
// server sees them as many clients, as it would in production, instead of tripping its
// per-address connection cap with all of them on 127.0.0.1.
const perSource = 100

// dialers opens WebSockets to the server's /realtime.
type dialers struct {
	url    string
	spread bool
	n      atomic.Int64
}

func newDialers(c Config) (*dialers, *url.URL, error) {
	base, err := url.Parse(c.URL)
	if err != nil || base.Host == "" {
		return nil, nil, fmt.Errorf("bad --url %q", c.URL)
	}
	ws := *base
	ws.Scheme = strings.Replace(base.Scheme, "http", "ws", 1)
	ws.Path = strings.TrimRight(base.Path, "/") + "/realtime"
	ip := net.ParseIP(base.Hostname())
	return &dialers{url: ws.String(), spread: ip != nil && ip.To4() != nil && ip.IsLoopback()}, base, nil
}

// dial opens one WebSocket, authenticates it with token and reads its ready frame.
func (d *dialers) dial(ctx context.Context, token string) (*websocket.Conn, error) {
	i := d.n.Add(1) - 1
	nd := &net.Dialer{Timeout: 10 * time.Second}
	if d.spread {
		src := i / perSource
		nd.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 1, byte(src/250), byte(src%250+1))}
	}
	wd := websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: 10 * time.Second, ReadBufferSize: 1024, WriteBufferSize: 512}
	ws, resp, err := wd.DialContext(ctx, d.url, nil)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if err := ws.WriteJSON(map[string]string{"type": "auth", "token": token}); err != nil {
		ws.Close()
		return nil, err
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := ws.ReadMessage()
	if err != nil || !bytes.Contains(b, []byte(`"type":"ready"`)) {
		ws.Close()
		return nil, fmt.Errorf("no ready frame (%v): %s", err, b)
	}
	_ = ws.SetReadDeadline(time.Time{})
	return ws, nil
}

// dialAll opens one WebSocket per token, 32 at a time.
func (d *dialers) dialAll(ctx context.Context, tokens []string) ([]*websocket.Conn, error) {
	conns := make([]*websocket.Conn, len(tokens))
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(tokens) || ctx.Err() != nil {
					return
				}
				ws, err := d.dial(ctx, tokens[i])
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("WebSocket %d: %w", i, err) })
					return
				}
				conns[i] = ws
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		closeAll(conns)
		return nil, firstErr
	}
	return conns, ctx.Err()
}

func closeAll(conns []*websocket.Conn) {
	for _, ws := range conns {
		if ws != nil {
			ws.Close()
		}
	}
}

// openConversations opens n conversations by posting body to path (POST /conversations with an
// API key, POST /widget/conversations with the widget key), up to 64 requests at once, and
// returns their ids and visitor tokens.
func openConversations(client *fasthttp.HostClient, prefix, path, key, body string, n int) (ids, tokens []string, err error) {
	ids, tokens = make([]string, n), make([]string, n)
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range min(64, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				status, answer, e := do(client, "POST", prefix+path, key, "", []byte(body))
				var out struct {
					Conversation struct {
						ID string `json:"id"`
					} `json:"conversation"`
					VisitorToken string `json:"visitor_token"`
				}
				if e == nil && status == 201 {
					e = json.Unmarshal(answer, &out)
				} else if e == nil {
					e = fmt.Errorf("%d %s: %s", status, errorCode(answer), answer)
				}
				if e != nil {
					mu.Lock()
					err = fmt.Errorf("opening conversation %d: %w", i, e)
					mu.Unlock()
					return
				}
				ids[i], tokens[i] = out.Conversation.ID, out.VisitorToken
			}
		}()
	}
	wg.Wait()
	return ids, tokens, err
}

// RealtimeResult is what a realtime run measured.
type RealtimeResult struct {
	Subscribers     int
	Posted, OK      int
	Expected, Got   int64                   // frames: one per subscriber per 201
	EarlyFrames     int64                   // frames that arrived before their post's 201 was read
	AfterResponse   *hdrhistogram.Histogram // µs from the 201 to the frame (0 when the frame came first)
	AfterSend       *hdrhistogram.Histogram // µs from sending the POST to the frame
	PostLatency     *hdrhistogram.Histogram // µs from sending the POST to its 201
	PostElapsed     time.Duration
	DeliveryTimeout bool
}

// RunRealtime subscribes Subscribers WebSockets to the org of the API key, posts into one
// conversation at Rate per second (at most Requests posts, for at most Duration), and measures
// how long after each 201 every subscriber had the message's frame.
func RunRealtime(ctx context.Context, c Config) (*RealtimeResult, error) {
	if c.APIKey == "" {
		return nil, errors.New("an API key is required (--key ak_…)")
	}
	if c.Rate == 0 {
		c.Rate = 20
	}
	if c.Subscribers < 1 || c.Rate < 0 || c.Requests < 1 || c.Duration <= 0 {
		return nil, errors.New("subscribers, rate, requests and duration must be positive")
	}
	d, base, err := newDialers(c)
	if err != nil {
		return nil, err
	}
	raiseFileLimit()
	client := &fasthttp.HostClient{Addr: base.Host, MaxConns: 256, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	prefix := strings.TrimRight(c.URL, "/")
	ids, _, err := openConversations(client, prefix, "/conversations", c.APIKey, `{"status":"open"}`, 1)
	if err != nil {
		return nil, err
	}
	posts := min(c.Requests, max(1, int(c.Rate*c.Duration.Seconds())))
	tokens := make([]string, c.Subscribers)
	for i := range tokens {
		tokens[i] = c.APIKey
	}
	conns, err := d.dialAll(ctx, tokens)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)

	// arrivals[s][n] is when subscriber s read the frame of post n (Unix ns, 0 = not yet).
	arrivals := make([][]int64, len(conns))
	var got atomic.Int64
	var readers sync.WaitGroup
	for s, ws := range conns {
		arrivals[s] = make([]int64, posts)
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				_, b, err := ws.ReadMessage()
				if err != nil {
					return
				}
				now := time.Now().UnixNano()
				if n, ok := postNumber(b); ok && n < posts && arrivals[s][n] == 0 {
					arrivals[s][n] = now
					got.Add(1)
				}
			}
		}()
	}

	sent := make([]int64, posts)
	answered := make([]int64, posts) // 0 unless the post got its 201
	res := &RealtimeResult{Subscribers: len(conns), Posted: posts,
		AfterResponse: hdrhistogram.New(1, 60_000_000, 3), AfterSend: hdrhistogram.New(1, 60_000_000, 3), PostLatency: hdrhistogram.New(1, 60_000_000, 3)}
	pad := strings.Repeat("x", max(0, c.TextSize-12))
	var posters sync.WaitGroup
	tick := time.NewTicker(time.Duration(float64(time.Second) / c.Rate))
	start := time.Now()
	for n := 0; n < posts && ctx.Err() == nil; n++ {
		posters.Add(1)
		go func() {
			defer posters.Done()
			body := []byte(`{"text":"rtb-` + strconv.Itoa(n) + ` ` + pad + `"}`)
			sent[n] = time.Now().UnixNano()
			status, _, err := do(client, "POST", prefix+"/conversations/"+ids[0]+"/messages", c.APIKey, "", body)
			if err == nil && status == 201 {
				answered[n] = time.Now().UnixNano()
			}
		}()
		if n+1 < posts {
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
	}
	tick.Stop()
	posters.Wait()
	res.PostElapsed = time.Since(start)
	for n := range posts {
		if answered[n] != 0 {
			res.OK++
			res.PostLatency.RecordValue((answered[n] - sent[n]) / 1000)
		}
	}
	res.Expected = int64(res.OK) * int64(len(conns))

	// Every subscriber should now have, or soon have, every frame; give stragglers a bound.
	deadline := time.Now().Add(10 * time.Second)
	for got.Load() < res.Expected && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	res.DeliveryTimeout = got.Load() < res.Expected
	closeAll(conns)
	readers.Wait()
	for s := range arrivals {
		for n, at := range arrivals[s] {
			if at == 0 || answered[n] == 0 {
				continue
			}
			res.Got++
			after := at - answered[n]
			if after < 0 {
				res.EarlyFrames++
				after = 0
			}
			res.AfterResponse.RecordValue(after / 1000)
			res.AfterSend.RecordValue((at - sent[n]) / 1000)
		}
	}
	return res, nil
}

// postNumber finds n in a new_message frame whose text starts "rtb-n ".
func postNumber(frame []byte) (int, bool) {
	i := bytes.Index(frame, []byte(`"text":"rtb-`))
	if i < 0 {
		return 0, false
	}
	rest := frame[i+len(`"text":"rtb-`):]
	j := bytes.IndexByte(rest, ' ')
	if j < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(string(rest[:j]))
	return n, err == nil
}

// Report prints r for people.
func (r *RealtimeResult) Report(w io.Writer, c Config) {
	fmt.Fprintf(w, "realtime: %d subscribers of one org, %d posts (%d got 201) at %.0f/s in %.2fs\n",
		r.Subscribers, r.Posted, r.OK, c.Rate, r.PostElapsed.Seconds())
	fmt.Fprintf(w, "frames: %d of %d expected", r.Got, r.Expected)
	if r.DeliveryTimeout {
		fmt.Fprint(w, " (some never arrived within 10 s)")
	}
	fmt.Fprintf(w, "; %d arrived before their 201 was read (counted as 0)\n", r.EarlyFrames)
	ms := func(h *hdrhistogram.Histogram, q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }
	for _, row := range []struct {
		name string
		h    *hdrhistogram.Histogram
	}{{"201-to-frame", r.AfterResponse}, {"send-to-frame", r.AfterSend}, {"POST-to-201", r.PostLatency}} {
		if row.h.TotalCount() == 0 {
			continue
		}
		fmt.Fprintf(w, "%s ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n", row.name,
			ms(row.h, 50), ms(row.h, 90), ms(row.h, 99), ms(row.h, 99.9), float64(row.h.Max())/1000)
	}
}

// IdleResult is what an idle run measured.
type IdleResult struct {
	Connections    int
	Process        string // whose RSS was read
	Before, After  int64  // RSS in bytes
	PerConnection  float64
	OpenedIn       time.Duration
	ConversationIn time.Duration
}

// RunIdle opens Connections visitor WebSockets (one conversation each), leaves them idle for
// Settle, and reports how much the server's resident memory grew per connection.
func RunIdle(ctx context.Context, c Config) (*IdleResult, error) {
	if c.APIKey == "" {
		return nil, errors.New("an API key is required (--key ak_…)")
	}
	if c.Connections < 1 {
		return nil, errors.New("connections must be positive")
	}
	d, base, err := newDialers(c)
	if err != nil {
		return nil, err
	}
	raiseFileLimit()
	res := &IdleResult{Connections: c.Connections, Process: "this bench process (pass --server-pid to read a separate server)"}
	pid := "self"
	if c.ServerPID > 0 {
		pid = strconv.Itoa(c.ServerPID)
		res.Process = "server PID " + pid
	}
	client := &fasthttp.HostClient{Addr: base.Host, MaxConns: 128, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	t0 := time.Now()
	_, tokens, err := openConversations(client, strings.TrimRight(c.URL, "/"), "/conversations", c.APIKey, `{"status":"open"}`, c.Connections)
	if err != nil {
		return nil, err
	}
	res.ConversationIn = time.Since(t0)
	client.CloseIdleConnections()
	if res.Before, err = readRSS(pid); err != nil {
		return nil, err
	}
	t1 := time.Now()
	conns, err := d.dialAll(ctx, tokens)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	res.OpenedIn = time.Since(t1)
	select { // the connections idle: what they cost at rest is the figure
	case <-time.After(c.Settle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if res.After, err = readRSS(pid); err != nil {
		return nil, err
	}
	res.PerConnection = float64(res.After-res.Before) / float64(c.Connections)
	return res, nil
}

// readRSS reads VmRSS of /proc/<pid>/status in bytes.
func readRSS(pid string) (int64, error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0, fmt.Errorf("reading the RSS of %s: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%s/status", pid)
}

// raiseFileLimit lifts this process's descriptor limit to its hard limit: thousands of
// WebSockets need thousands of descriptors.
func raiseFileLimit() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

// Report prints r for people.
func (r *IdleResult) Report(w io.Writer, _ Config) {
	fmt.Fprintf(w, "idle: %d visitor WebSockets opened in %.2fs (conversations in %.2fs); RSS of %s\n",
		r.Connections, r.OpenedIn.Seconds(), r.ConversationIn.Seconds(), r.Process)
	fmt.Fprintf(w, "RSS before %.1f MiB, after %.1f MiB: %.1f KiB per connection\n",
		float64(r.Before)/(1<<20), float64(r.After)/(1<<20), r.PerConnection/1024)
}
