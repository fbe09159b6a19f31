package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/awardee/awardee/bench/load"
	"github.com/awardee/awardee/engine"
)

// runBench runs `awardee bench ARGS --json` as the command does, with the in-process server
// when ARGS name no --url, and decodes its report.
func runBench(t *testing.T, args ...string) *load.Report {
	t.Helper()
	var out bytes.Buffer
	args = append(args, "--json", "--dir", t.TempDir())
	if err := load.Main(t.Context(), args, &out, io.Discard, startBenchServer); err != nil {
		t.Fatalf("bench %v: %v", args, err)
	}
	var report load.Report
	if err := json.Unmarshal(out.Bytes(), &report); err != nil {
		t.Fatalf("the --json report does not decode: %v\n%s", err, out.Bytes())
	}
	return &report
}

// checkAllCreated fails unless every post of res was answered 201, the counts add up to want,
// and the latency figures are positive and ordered.
func checkAllCreated(t *testing.T, res *load.Result, want int64) {
	t.Helper()
	if res.Sent != want || res.OK != want || res.ByStatus["201"] != want || len(res.ByStatus) != 1 ||
		len(res.ByCode) != 0 || res.TransportErrors != 0 {
		t.Fatalf("%s: sent %d, ok %d, by status %v, errors %v, transport %d (%s); want %d posts, every one 201",
			res.Target, res.Sent, res.OK, res.ByStatus, res.ByCode, res.TransportErrors, res.FirstTransport, want)
	}
	l := res.Latency
	if !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max && l.Mean > 0) {
		t.Fatalf("%s: latency percentiles %+v are not positive and ordered", res.Target, l)
	}
	if res.Elapsed <= 0 || res.Throughput <= 0 {
		t.Fatalf("%s: elapsed %v, throughput %v", res.Target, res.Elapsed, res.Throughput)
	}
}

// TestBenchInProcess runs the load tool as `awardee bench` with no --url: it starts the real
// server in process, and its report counts every post, closed loop and open.
func TestBenchInProcess(t *testing.T) {
	closed := runBench(t, "--requests", "150", "--concurrency", "8", "--conversations", "4")
	if len(closed.Runs) != 1 || closed.Ratios != nil {
		t.Fatalf("runs %d, ratios %v: want the server's run alone", len(closed.Runs), closed.Ratios)
	}
	checkAllCreated(t, closed.Runs[0], 150)
	if r := closed.Runs[0]; r.Target != "awardee" || r.Loop != "closed" || r.Mix != "text" || r.Concurrency != 8 {
		t.Fatalf("run described as %+v", r)
	}

	// The open loop sends on a schedule: post n is due at n/rate, so the run cannot end before
	// the last one was due, however fast the server answers.
	const rate, posts = 400, 80
	open := runBench(t, "--requests", "80", "--concurrency", "8", "--conversations", "4", "--rate", "400")
	r := open.Runs[0]
	checkAllCreated(t, r, posts)
	if r.Loop != "open" || r.Rate != rate {
		t.Fatalf("loop %q at %v/s, want open at %d/s", r.Loop, r.Rate, rate)
	}
	if due := float64(posts-1) / rate; r.Elapsed < due {
		t.Fatalf("the open loop took %.3fs, less than the %.3fs its schedule spans", r.Elapsed, due)
	}

	// One connection cannot keep a schedule of 100,000 posts a second: each post waits for the
	// one before it, and its latency counts that wait (coordinated omission). The last post was
	// due within half a millisecond of the start and answered near the end, so the worst
	// latency spans most of the run, not one post's round trip.
	behind := runBench(t, "--requests", "50", "--concurrency", "1", "--conversations", "2", "--rate", "100000")
	r = behind.Runs[0]
	checkAllCreated(t, r, 50)
	if r.Late == 0 || r.Latency.Max < 0.5*(r.Elapsed-49.0/100000)*1000 {
		t.Fatalf("%d posts late, worst latency %.2f ms in a run of %.3fs: the wait for a connection was not counted",
			r.Late, r.Latency.Max, r.Elapsed)
	}
}

// TestBenchCeiling runs the same load, twice, against the server and the three reference
// servers and checks that each target's two rounds are summed and every ratio is a positive share.
func TestBenchCeiling(t *testing.T) {
	report := runBench(t, "--ceiling", "--rounds", "2", "--requests", "60", "--concurrency", "4", "--conversations", "4")
	var names []string
	for _, r := range report.Runs {
		names = append(names, r.Target)
		checkAllCreated(t, r, 120)
		if r.Rounds != 2 {
			t.Fatalf("%s: %d rounds, want 2", r.Target, r.Rounds)
		}
	}
	if got := strings.Join(names, ","); got != "awardee,no-write,one-row,post-rows" {
		t.Fatalf("runs %s", got)
	}
	for _, ref := range []string{"no-write", "one-row", "post-rows"} {
		if v := report.Ratios["awardee/"+ref]; !(v > 0) {
			t.Fatalf("ratio awardee/%s = %v, want > 0 (ratios %v)", ref, v, report.Ratios)
		}
	}
}

// TestBenchMixes runs each mix briefly: visitors through /widget with team replies in turn and
// team replies with an image from the fixture server, against a server whose store shows what
// was posted, and the realtime subscribers in process.
func TestBenchMixes(t *testing.T) {
	ts := newTestServer(t, allowPrivate) // the fixture server is on 127.0.0.1
	org := ts.newOrg(t, 0, 0)
	bench := func(args ...string) *load.Result {
		t.Helper()
		var out bytes.Buffer
		args = append(args, "--url", ts.URL, "--key", org.APIKey, "--widget-key", org.WidgetKey, "--concurrency", "4", "--json")
		if err := load.Main(t.Context(), args, &out, io.Discard, nil); err != nil {
			t.Fatal(err)
		}
		var report load.Report
		if err := json.Unmarshal(out.Bytes(), &report); err != nil {
			t.Fatal(err)
		}
		return report.Runs[0]
	}
	checkAllCreated(t, bench("--mix", "visitor", "--requests", "40", "--conversations", "4"), 40)
	// Each of the 4 conversations got 10 posts, the visitor's and the team's in turn.
	convs := pages[engine.Conversation](t, ts.apiClient, org.APIKey, "/conversations?limit=100")
	roles := map[engine.Role]int{}
	for _, c := range convs {
		for _, m := range ts.messages(t, org.APIKey, c.ID) {
			roles[m.Role]++
		}
	}
	if len(convs) != 4 || roles[engine.RoleUser] != 20 || roles[engine.RoleAssistant] != 20 {
		t.Fatalf("%d conversations with messages by role %v, want 4 with 20 visitor and 20 team posts", len(convs), roles)
	}

	checkAllCreated(t, bench("--mix", "attachments", "--requests", "20", "--conversations", "2"), 20)
	var usage struct {
		AssetCount int `json:"asset_count"`
	}
	mustStatus(t, ts.do(t, "GET", "/usage", org.APIKey, nil), 200).Decode(t, &usage)
	if usage.AssetCount != 16 {
		t.Fatalf("%d assets, want the 16 distinct fixture images the 20 posts carried", usage.AssetCount)
	}

	var out bytes.Buffer
	args := []string{"--mix", "realtime", "--subscribers", "3", "--requests", "10", "--rate", "200", "--dir", t.TempDir()}
	if err := load.Main(t.Context(), args, &out, io.Discard, startBenchServer); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "10 posts (10 got 201)") || !strings.Contains(out.String(), "frames: 30 of 30 expected") {
		t.Fatalf("realtime report:\n%s", out.String())
	}
}

// TestBenchCountsRefusals loads a server whose org window is small: the refusals are counted by
// status and error code, and everything sent is accounted for. A wrong key is refused up front.
func TestBenchCountsRefusals(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 1, 6) // two conversations leave four posts in the window
	var out bytes.Buffer
	args := []string{"--url", ts.URL, "--key", org.APIKey, "--requests", "30", "--concurrency", "2", "--conversations", "2", "--json"}
	if err := load.Main(t.Context(), args, &out, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	var report load.Report
	if err := json.Unmarshal(out.Bytes(), &report); err != nil {
		t.Fatal(err)
	}
	r := report.Runs[0]
	refused := r.ByCode["429 rate_limit_exceeded"]
	if refused == 0 || r.ByStatus["429"] != refused || r.ByStatus["201"] != r.OK || r.OK == 0 ||
		r.OK+refused != 30 || r.Sent != 30 || len(r.ByCode) != 1 {
		t.Fatalf("sent %d, ok %d, by status %v, by code %v: want 30 posts, some 201 and the rest 429 rate_limit_exceeded",
			r.Sent, r.OK, r.ByStatus, r.ByCode)
	}

	err := load.Main(t.Context(), []string{"--url", ts.URL, "--key", "ak_wrong", "--requests", "5"}, io.Discard, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "401 unauthorized") {
		t.Fatalf("a wrong key: %v, want the 401 unauthorized that refused it", err)
	}
	err = load.Main(t.Context(), []string{"--key", org.APIKey, "--requests", "5"}, io.Discard, io.Discard, startBenchServer)
	if err == nil || !strings.Contains(err.Error(), "--url") {
		t.Fatalf("a key without --url: %v, want a refusal naming --url", err)
	}
	// `go run ./bench` has no server to start: without --url it says what to run instead.
	err = load.Main(t.Context(), []string{"--requests", "5"}, io.Discard, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "awardee bench") {
		t.Fatalf("no --url and no server: %v", err)
	}
}
