package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
)

// startServe runs the built binary with argv (a prefix such as prlimit, then serve's flags after
// "serve") on a free loopback port and waits until it listens; unlike startProcess it takes any
// arguments.
func startServe(t *testing.T, prefix []string, serveArgs ...string) *process {
	t.Helper()
	argv := append(append(append([]string{}, prefix...), awardeeBinary(t), "serve", "--addr", "127.0.0.1:0"), serveArgs...)
	return startCommand(t, exec.Command(argv[0], argv[1:]...))
}

var printedAPIKey = regexp.MustCompile(`API key: +(ak_\S+)`)

// apiKeyOf is the default org's API key that a first start printed. The keys are written before
// the listening line, but stdout reaches the test through its own pipe and copier, so it may
// arrive after it.
func apiKeyOf(t *testing.T, p *process) string {
	t.Helper()
	testkit.WaitFor(t, "the API key on stdout", func() bool { return printedAPIKey.MatchString(p.stdout.String()) })
	return printedAPIKey.FindStringSubmatch(p.stdout.String())[1]
}

// metricValue reads one unlabelled sample of /metrics through client.
func metricValue(t *testing.T, client *http.Client, baseURL, name string) float64 {
	t.Helper()
	res, err := client.Get(baseURL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

func expectServing(t *testing.T, client *http.Client, baseURL, key, when string) {
	t.Helper()
	res, err := client.Get(baseURL + "/healthz")
	if err != nil {
		t.Fatalf("healthz %s: %v", when, err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("healthz %s: status %d", when, res.StatusCode)
	}
	if r, err := (&apiClient{URL: baseURL, hc: client}).try("POST", "/conversations", key, `{"status":"open"}`); err != nil || r.Status != 201 {
		t.Fatalf("POST /conversations %s: %d %v %s", when, r.Status, err, r.Body)
	}
}

var maxConnsLine = regexp.MustCompile(`max_conns=(\d+)`)

// TestIdleFloodUnderLowDescriptorLimit holds 400 idle connections against the built binary
// limited to 256 descriptors: the server must stay up, keep serving a client that was already
// connected, and serve new clients once the flood ends. With no cap, the 247th idle connection
// made accept fail with EMFILE and the process exit.
func TestIdleFloodUnderLowDescriptorLimit(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("prlimit is not installed")
	}
	const flood = 400
	for _, tc := range []struct {
		name    string
		perAddr int
	}{{"no per-address cap", 0}, {"per-address cap", 32}} {
		t.Run(tc.name, func(t *testing.T) {
			p := startServe(t, []string{"prlimit", "--nofile=256"}, "--data", t.TempDir(), "--max-conns-per-ip", strconv.Itoa(tc.perAddr))
			key := apiKeyOf(t, p)
			m := maxConnsLine.FindStringSubmatch(p.stderr.String())
			if m == nil {
				t.Fatalf("no max_conns in the log:\n%s", p.stderr)
			}
			maxConns, _ := strconv.Atoi(m[1])
			if maxConns >= 256 {
				t.Fatalf("max_conns %d is not below the descriptor limit 256", maxConns)
			}
			// One client connected before the flood, on one kept-alive connection.
			kept := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
			expectServing(t, kept, p.URL, key, "before the flood")

			conns := make([]net.Conn, 0, flood)
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			host := strings.TrimPrefix(p.URL, "http://")
			for i := range flood {
				c, err := net.DialTimeout("tcp", host, 5*time.Second)
				if err != nil {
					t.Fatalf("dial %d: %v", i, err)
				}
				conns = append(conns, c)
			}
			if tc.perAddr > 0 {
				// The kept connection holds one of the address's slots.
				refused := float64(flood - (tc.perAddr - 1))
				testkit.WaitFor(t, "the connections over the per-address cap to be refused", func() bool {
					return metricValue(t, kept, p.URL, "awardee_http_connections_refused_total") == refused
				})
			} else {
				testkit.WaitFor(t, "the flood to fill the connection cap", func() bool {
					return metricValue(t, kept, p.URL, "awardee_http_open_connections") == float64(maxConns)
				})
				if metricValue(t, kept, p.URL, "awardee_http_connection_cap_waits_total") == 0 {
					t.Fatal("the flood passed the cap without a wait being counted")
				}
			}
			expectServing(t, kept, p.URL, key, "during the flood")
			select {
			case err := <-p.exited:
				t.Fatalf("the server exited during the flood: %v\n%s", err, p.stderr)
			default:
			}

			for _, c := range conns {
				c.Close()
			}
			conns = conns[:0]
			testkit.WaitFor(t, "the server to see the flood's connections close", func() bool {
				return metricValue(t, kept, p.URL, "awardee_http_open_connections") == 1
			})
			fresh := &http.Client{Timeout: 5 * time.Second}
			expectServing(t, fresh, p.URL, key, "after the flood")
		})
	}
}

// rawExchange writes head on a new connection and reads the answer's status line and headers.
func rawExchange(t *testing.T, addr, head string) (status int, header http.Header) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode >= 400 && !bytes.Contains(body, []byte(`"error":{"code":`)) {
		t.Fatalf("status %d without the error envelope: %s", res.StatusCode, body)
	}
	return res.StatusCode, res.Header
}

// TestTransportLimits: a request line over 8 KiB is 414 and header fields over 16 KiB are 431,
// whether the head still fits the read buffer or not; heads within the limits are served. Widget
// paths carry CORS on each.
func TestTransportLimits(t *testing.T) {
	ts := newTestServer(t)
	addr := strings.TrimPrefix(ts.URL, "http://")
	pad := func(n int) string { return strings.Repeat("a", n) }
	header := func(n int) string { return "X-Pad: " + pad(n) + "\r\n" }
	for _, tc := range []struct {
		name string
		head string
		want int
	}{
		{"line within the limit", "GET /widget/" + pad(8000) + " HTTP/1.1\r\nHost: x\r\n\r\n", 404},
		{"line over the limit", "GET /widget/" + pad(8300) + " HTTP/1.1\r\nHost: x\r\n\r\n", 414},
		{"line far over the buffer", "GET /widget/" + pad(40<<10) + " HTTP/1.1\r\nHost: x\r\n\r\n", 414},
		{"headers within the limit", "GET /healthz HTTP/1.1\r\nHost: x\r\n" + header(15<<10) + "\r\n", 200},
		{"headers over the limit", "GET /widget/conversations HTTP/1.1\r\nHost: x\r\n" + header(17<<10) + "\r\n", 431},
		{"headers far over the buffer", "GET /widget/conversations HTTP/1.1\r\nHost: x\r\n" + header(40<<10) + "\r\n", 431},
		{"line and headers at their limits", "GET /healthz?" + pad(8100) + " HTTP/1.1\r\nHost: x\r\n" + header(16000) + "\r\n", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, h := rawExchange(t, addr, tc.head)
			if status != tc.want {
				t.Fatalf("status %d, want %d", status, tc.want)
			}
			if tc.want >= 400 && h.Get("Access-Control-Allow-Origin") != "*" {
				t.Fatalf("%d without CORS headers: %v", status, h)
			}
		})
	}
}

// TestSlowClientGets408: a connection that sends no headers, or only part of them, within 10 s
// of connecting is answered 408 and closed; one that finishes in time is served.
func TestSlowClientGets408(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	addr := strings.TrimPrefix(ts.URL, "http://")
	type outcome struct {
		status int
		after  time.Duration
		err    error
	}
	try := func(sent string) <-chan outcome {
		out := make(chan outcome, 1)
		go func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				out <- outcome{err: err}
				return
			}
			defer c.Close()
			start := time.Now()
			c.SetDeadline(start.Add(30 * time.Second))
			io.WriteString(c, sent)
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				out <- outcome{err: err}
				return
			}
			res.Body.Close()
			// The server closes after a 408: the next read ends.
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				out <- outcome{err: fmt.Errorf("connection still open after %d: %v", res.StatusCode, err)}
				return
			}
			out <- outcome{status: res.StatusCode, after: time.Since(start)}
		}()
		return out
	}
	silent := try("")
	partial := try("GET /healthz HTTP/1.1\r\nHost: x\r\n")
	for name, ch := range map[string]<-chan outcome{"silent": silent, "partial headers": partial} {
		o := <-ch
		if o.err != nil {
			t.Fatalf("%s: %v", name, o.err)
		}
		if o.status != 408 || o.after < 9*time.Second || o.after > 20*time.Second {
			t.Fatalf("%s: status %d after %s, want 408 after about 10 s", name, o.status, o.after)
		}
	}
}

// TestWidgetErrorsCarryCORS: a browser must be able to read every widget answer, the router's
// 405 and 404 and the transport's 413 included.
func TestWidgetErrorsCarryCORS(t *testing.T) {
	ts := newTestServer(t)
	for _, tc := range []struct {
		method, path string
		body         any
		want         int
	}{
		{"DELETE", "/widget/conversations", nil, 405},
		{"PUT", "/widget/conversations/conv_x/messages", nil, 405},
		{"GET", "/widget/nope", nil, 404},
		{"POST", "/widget/conversations", bytes.Repeat([]byte("a"), 2<<20), 413},
		{"POST", "/widget/conversations", nil, 401},
	} {
		r := ts.do(t, tc.method, tc.path, "", tc.body)
		if r.Status != tc.want {
			t.Fatalf("%s %s: status %d, want %d", tc.method, tc.path, r.Status, tc.want)
		}
		if r.Header.Get("Access-Control-Allow-Origin") != "*" || r.Header.Get("Access-Control-Expose-Headers") == "" {
			t.Fatalf("%s %s (%d) lacks CORS headers: %v", tc.method, tc.path, r.Status, r.Header)
		}
	}
	if r := ts.do(t, "DELETE", "/conversations", "", nil); r.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("a team endpoint's 405 carries CORS: %v", r.Header)
	}
}

// emfileListener fails its first Accepts as a process out of descriptors does.
type emfileListener struct {
	net.Listener
	failures atomic.Int32
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.failures.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptRetriesWhenOutOfDescriptors: EMFILE from accept pauses and retries instead of
// ending Serve.
func TestAcceptRetriesWhenOutOfDescriptors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	failing := &emfileListener{Listener: ln}
	failing.failures.Store(4)
	cfg := defaultConfig()
	cfg.Data = t.TempDir()
	cfg.Addr = ln.Addr().String()
	srv, err := newServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(failing) }()
	client := &http.Client{Timeout: 10 * time.Second}
	res, err := client.Get("http://" + cfg.Addr + "/healthz")
	if err != nil {
		select {
		case err := <-served:
			t.Fatalf("Serve returned on EMFILE: %v", err)
		default:
		}
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("healthz %d", res.StatusCode)
	}
	if got := srv.conns.acceptRetries.Load(); got != 4 {
		t.Fatalf("%d accept retries counted, want 4", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

func TestConnectionCap(t *testing.T) {
	for _, tc := range []struct {
		requested int
		limit     uint64
		want      int
	}{
		{0, 256, 192},
		{0, 1024, 896},
		{0, 1 << 20, defaultMaxConns},
		{0, 0, defaultMaxConns},
		{50000, 0, 50000},
		{100, 256, 100},
		{5000, 256, 192},
		{50000, 1 << 20, 50000},
		{0, 10, 1},
	} {
		if got := connectionCap(tc.requested, tc.limit); got != tc.want {
			t.Errorf("connectionCap(%d, %d) = %d, want %d", tc.requested, tc.limit, got, tc.want)
		}
	}
}

// slowBody starts a request whose body never finishes, so the server holds it in flight.
func slowBody(t *testing.T, baseURL string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(baseURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	io.WriteString(c, "POST /conversations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"st")
	return c
}

// TestSecondSignalStopsTheDrain: with a request held in flight, a second SIGTERM ends the drain
// at once, with a non-zero exit and a log line that says so.
func TestSecondSignalStopsTheDrain(t *testing.T) {
	p := startServe(t, nil, "--data", t.TempDir(), "--shutdown-timeout", "25s")
	slowBody(t, p.URL)
	testkit.WaitFor(t, "the slow request to be read", func() bool {
		return metricValue(t, &http.Client{Timeout: 5 * time.Second}, p.URL, "awardee_http_open_connections") >= 2
	})
	p.cmd.Process.Signal(syscall.SIGTERM)
	testkit.WaitFor(t, "the drain to start", func() bool { return strings.Contains(p.stderr.String(), "shutting down") })
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err == nil {
			t.Fatal("exit status 0 after a drain cut short")
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("took %s to stop after the second signal", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still draining 10 s after the second signal:\n%s", p.stderr)
	}
	if log := p.stderr.String(); !strings.Contains(log, "second signal") || strings.Contains(log, "stopped cleanly") {
		t.Fatalf("the log does not say the drain was cut short:\n%s", log)
	}
}

// TestTimedOutDrainSaysSo: a drain that reaches --shutdown-timeout with a request in flight is
// logged as timed out, not as a clean stop.
func TestTimedOutDrainSaysSo(t *testing.T) {
	p := startServe(t, nil, "--data", t.TempDir(), "--shutdown-timeout", "300ms")
	slowBody(t, p.URL)
	testkit.WaitFor(t, "the slow request to be read", func() bool {
		return metricValue(t, &http.Client{Timeout: 5 * time.Second}, p.URL, "awardee_http_open_connections") >= 2
	})
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err == nil {
			t.Fatal("exit status 0 after a timed-out drain")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10 s after SIGTERM with a 300ms drain:\n%s", p.stderr)
	}
	if log := p.stderr.String(); !strings.Contains(log, "drain timed out") || strings.Contains(log, "stopped cleanly") {
		t.Fatalf("the log does not say the drain timed out:\n%s", log)
	}
}

// TestBusyPortKeepsTheFirstSecrets: a first start that cannot bind prints no secret and creates
// no org, so the start that succeeds later prints keys that work.
func TestBusyPortKeepsTheFirstSecrets(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(awardeeBinary(t), "serve", "--addr", busy.Addr().String(), "--data", dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err == nil {
		t.Fatal("serve on a busy port exited 0")
	}
	if !strings.Contains(stderr.String(), "address already in use") {
		t.Fatalf("the failure does not say why: %s", stderr.String())
	}
	if strings.Contains(stdout.String(), "ak_") || strings.Contains(stdout.String(), "wk_") {
		t.Fatalf("a start that could not bind printed secrets: %q", stdout.String())
	}
	if _, err := os.Stat(filepath.Join(dir, engine.DatabaseFile)); err == nil {
		t.Fatal("a start that could not bind created the database")
	}
	p := startProcess(t, dir)
	key := apiKeyOf(t, p)
	if r := p.do(t, "POST", "/conversations", key, `{}`); r.Status != 201 {
		t.Fatalf("the printed key does not work: %d %s", r.Status, r.Body)
	}
}

// TestMetricsToken: with --metrics-token, /metrics answers only its bearer, in constant time and
// in the error envelope otherwise; without it /metrics is public. Either way it names no org.
func TestMetricsToken(t *testing.T) {
	open := newTestServer(t)
	org := open.newOrg(t, 0, 0)
	open.newConversation(t, org.APIKey, engine.StatusOpen)
	page := mustStatus(t, open.do(t, "GET", "/metrics", "", nil), 200)
	if bytes.Contains(page.Body, []byte(org.OrgID)) || bytes.Contains(page.Body, []byte(`org="`)) || bytes.Contains(page.Body, []byte(`org_id="`)) {
		t.Fatal("/metrics names an org")
	}

	guarded := newTestServer(t, func(c *Config) { c.MetricsToken = "s3cret-token" })
	for _, auth := range []string{"", "Bearer wrong", "Bearer s3cret-toke", "Bearer s3cret-token2", "s3cret-token", "Basic s3cret-token"} {
		var r resp
		if auth == "" {
			r = guarded.do(t, "GET", "/metrics", "", nil)
		} else {
			r = guarded.do(t, "GET", "/metrics", "", nil, "Authorization", auth)
		}
		if r.Status != 401 || r.ErrorCode(t) != engine.CodeUnauthorized || bytes.Contains(r.Body, []byte("awardee_")) {
			t.Fatalf("Authorization %q: %d %s", auth, r.Status, r.Body)
		}
	}
	for _, auth := range []string{"Bearer s3cret-token", "bearer s3cret-token"} {
		r := mustStatus(t, guarded.do(t, "GET", "/metrics", "", nil, "Authorization", auth), 200)
		if !bytes.Contains(r.Body, []byte("awardee_commit_batches_total")) {
			t.Fatalf("Authorization %q: no metrics: %s", auth, r.Body)
		}
	}

	t.Setenv("AWARDEE_METRICS_TOKEN", "from-env")
	cfg := defaultConfig()
	if err := parseWithEnv(newServeFlagSet(&cfg), nil); err != nil || cfg.MetricsToken != "from-env" {
		t.Fatalf("AWARDEE_METRICS_TOKEN: %q %v", cfg.MetricsToken, err)
	}
}
