package main

import (
	"fmt"
	"strings"
	"testing"
)

// TestMetricsLabelsStayBounded: made-up methods must not each become a new series.
func TestMetricsLabelsStayBounded(t *testing.T) {
	ts := newTestServer(t)
	for i := range 10 {
		r := ts.do(t, fmt.Sprintf("M%d", i), "/conversations", "", nil)
		if r.Status != 405 {
			t.Fatalf("M%d: %d", i, r.Status)
		}
	}
	page := string(mustStatus(t, ts.do(t, "GET", "/metrics", "", nil), 200).Body)
	if strings.Contains(page, `method="M3"`) || !strings.Contains(page, `method="other",route="unmatched",status="405"`) {
		t.Fatalf("unbounded or missing method labels in /metrics")
	}
}
