package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/awardee/awardee/engine"
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

// TestOptionsOnlyWhereAnswered: OPTIONS is allowed, and listed in Allow, only on the widget's
// real paths.
func TestOptionsOnlyWhereAnswered(t *testing.T) {
	ts := newTestServer(t)
	r := mustStatus(t, ts.do(t, "OPTIONS", "/healthz", "", nil), 405)
	if allow := r.Header.Get("Allow"); allow != "GET" {
		t.Fatalf("Allow %q, want GET", allow)
	}
	r = mustStatus(t, ts.do(t, "PUT", "/conversations/conv_x/messages", "", nil), 405)
	if allow := r.Header.Get("Allow"); allow != "GET, POST" {
		t.Fatalf("Allow %q, want GET, POST", allow)
	}
	mustStatus(t, ts.do(t, "OPTIONS", "/widget/nope", "", nil), 404)
	mustStatus(t, ts.do(t, "OPTIONS", "/widget/conversations/conv_x/messages", "", nil), 204)
}

// The feed's consumers are visible: a subscription that has not read shows its lag.
func TestMetricsShowFeedLag(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	sub := ts.db.Subscribe("probe")
	defer sub.Close()
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"hi"}`), 201)
	page := string(mustStatus(t, ts.do(t, "GET", "/metrics", "", nil), 200).Body)
	for _, want := range []string{`awardee_feed_lag_events{consumer="probe"} 1`, `awardee_feed_dropped_total{consumer="probe"} 0`} {
		if !strings.Contains(page, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestMetricsSeriesPerStatusAndMethod: a route's requests are counted under their own method and
// status, however many of each came before, and the messages counter under each post's source.
func TestMetricsSeriesPerStatusAndMethod(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	path := "/conversations/" + id + "/messages"
	for range 3 {
		mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":"hi"}`), 201)
	}
	for range 2 {
		mustStatus(t, ts.do(t, "POST", path, org.APIKey, `{"text":""}`), 400)
	}
	mustStatus(t, ts.do(t, "GET", path, org.APIKey, nil), 200)
	bot := ts.conversationIn(t, org.APIKey, engine.StatusBotActive)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+bot+"/bot-messages", org.APIKey, `{"text":"hi"}`), 201)
	page := string(mustStatus(t, ts.do(t, "GET", "/metrics", "", nil), 200).Body)
	for _, want := range []string{
		`awardee_http_request_duration_seconds_count{method="POST",route="/conversations/{id}/messages",status="201"} 3`,
		`awardee_http_request_duration_seconds_count{method="POST",route="/conversations/{id}/messages",status="400"} 2`,
		`awardee_http_request_duration_seconds_count{method="GET",route="/conversations/{id}/messages",status="200"} 1`,
		`awardee_messages_posted_total{source="api"} 3`,
		`awardee_messages_posted_total{source="bot"} 1`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
