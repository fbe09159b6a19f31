package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/bench/load"
	"github.com/awardee/awardee/engine"
)

// TestLoadGenerator runs the load tool, bounded small, against the real server and checks that
// what it reports is what the server stored.
func TestLoadGenerator(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	cfg := load.Config{URL: ts.URL, APIKey: org.APIKey, Conversations: 3, Concurrency: 8, Requests: 120, Duration: 30 * time.Second, TextSize: 10, Idempotency: true}
	res, err := load.Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 120 || res.Sent != 120 || res.Latency.TotalCount() != 120 {
		t.Fatalf("ok %d sent %d latencies %d, want 120 each", res.OK, res.Sent, res.Latency.TotalCount())
	}
	counts, err := ts.db.CountByStatus()
	if err != nil || counts[engine.StatusOpen] != 3 {
		t.Fatalf("open conversations %d (%v), want 3", counts[engine.StatusOpen], err)
	}
	var out bytes.Buffer
	res.Report(&out, cfg)
	if !strings.Contains(out.String(), "posted 120 messages") || !strings.Contains(out.String(), "status 201: 120") {
		t.Fatalf("report:\n%s", out.String())
	}
	if _, err := load.Run(t.Context(), load.Config{URL: ts.URL}); err == nil {
		t.Fatal("a run without a key should refuse")
	}
}
