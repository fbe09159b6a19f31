package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// received is one delivery as a receiver saw it.
type received struct {
	ID, Timestamp string
	Type          string
	Data          json.RawMessage
	Body          []byte
}

// receiver is a real HTTP receiver on 127.0.0.1 that checks every delivery's signature twice,
// with the official Standard Webhooks library and with a hand-written HMAC, and fails the test
// on any mismatch. fail decides, from the delivery's number (1, 2, …), whether to answer 500.
type receiver struct {
	t      testing.TB
	srv    *httptest.Server
	mu     sync.Mutex
	secret string
	got    []received
	fail   func(n int) bool
	hold   chan struct{} // when set, every request waits on it
}

func newReceiver(t testing.TB) *receiver {
	r := &receiver{t: t}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(func() {
		r.release()
		r.srv.Close()
	})
	return r
}

func (r *receiver) setSecret(secret string) {
	r.mu.Lock()
	r.secret = secret
	r.mu.Unlock()
}

func (r *receiver) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold != nil {
		close(r.hold)
		r.hold = nil
	}
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	hold := r.hold
	r.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-req.Context().Done():
			return
		}
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		r.t.Errorf("receiver: %v", err)
		return
	}
	r.mu.Lock()
	secret := r.secret
	r.mu.Unlock()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		r.t.Errorf("receiver: secret %q: %v", secret, err)
	} else if err := wh.Verify(body, req.Header); err != nil {
		r.t.Errorf("the official library refuses the signature: %v", err)
	}
	id, ts := req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp")
	key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "%s.%s.%s", id, ts, body)
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	if got := req.Header.Get("webhook-signature"); got != want {
		r.t.Errorf("webhook-signature %q, the HMAC of id.timestamp.body is %q", got, want)
	}
	var payload struct {
		Type      string          `json:"type"`
		Timestamp string          `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &payload); err != nil || payload.Type == "" || payload.Timestamp == "" || len(payload.Data) == 0 {
		r.t.Errorf("body is not {type, timestamp, data}: %v: %s", err, body)
	}
	r.mu.Lock()
	r.got = append(r.got, received{ID: id, Timestamp: ts, Type: payload.Type, Data: payload.Data, Body: body})
	n := len(r.got)
	fail := r.fail != nil && r.fail(n)
	r.mu.Unlock()
	if fail {
		http.Error(w, "receiver is down for maintenance", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) deliveries() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

// waitDeliveries waits until the receiver has seen at least n requests and returns them all.
func (r *receiver) waitDeliveries(t testing.TB, n int) []received {
	t.Helper()
	testkit.WaitFor(t, fmt.Sprintf("%d webhook deliveries", n), func() bool { return len(r.deliveries()) >= n })
	return r.deliveries()
}

// registerWebhook registers the receiver for the given event types (all when none).
func (ts *testServer) registerWebhook(t testing.TB, apiKey string, r *receiver, types ...string) map[string]any {
	t.Helper()
	body := map[string]any{"url": r.srv.URL + "/hook"}
	if len(types) > 0 {
		body["events"] = types
	}
	ep := mustStatus(t, ts.do(t, "POST", "/webhooks", apiKey, body), 201).JSON(t)
	secret, _ := ep["secret"].(string)
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if !strings.HasPrefix(secret, "whsec_") || err != nil || len(raw) < 24 {
		t.Fatalf("secret %q is not whsec_ and the base64 of at least 24 bytes", secret)
	}
	r.setSecret(secret)
	return ep
}

func fastRetries(c *Config) { c.WebhookRetrySchedule = "50ms,50ms,50ms" }

// allowPrivate lets the server reach the receivers, which listen on 127.0.0.1.
func allowPrivate(c *Config) { c.AllowPrivateNetworks = true }

func TestWebhookTakeoverSignedAndInOrder(t *testing.T) {
	ts := newTestServer(t, allowPrivate, fastRetries)
	org := ts.newOrg(t, 0, 0)
	rcv := newReceiver(t)
	ep := ts.registerWebhook(t, org.APIKey, rcv)
	if ep["status"] != "active" || ep["id"] == "" {
		t.Fatalf("created endpoint: %v", ep)
	}
	conv := ts.conversationIn(t, org.APIKey, engine.StatusAgentRequested)
	before := len(ts.events(t, org.APIKey))
	mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey, `{"text":"I can help"}`), 201)
	got := rcv.waitDeliveries(t, before+3)[before:]

	if got[0].Type != engine.EventConversationUpdated {
		t.Fatalf("first delivery is %s, want conversation.updated", got[0].Type)
	}
	var upd engine.ConversationUpdatedData
	if err := json.Unmarshal(got[0].Data, &upd); err != nil {
		t.Fatal(err)
	}
	if ch := upd.Changes["status"]; ch.From != "agent_requested" || ch.To != "open" {
		t.Fatalf("changes.status = %v, want agent_requested → open", ch)
	}
	var texts []string
	for _, d := range got[1:3] {
		if d.Type != engine.EventMessageCreated {
			t.Fatalf("delivery is %s, want message.created", d.Type)
		}
		var mc engine.MessageCreatedData
		if err := json.Unmarshal(d.Data, &mc); err != nil {
			t.Fatal(err)
		}
		texts = append(texts, mc.Message.Text)
	}
	if texts[0] != engine.AgentJoinedText || texts[1] != "I can help" {
		t.Fatalf("message.created texts %q, want the marker then the reply", texts)
	}
	// The webhook-id is the event id, and data is what GET /events shows.
	events := ts.events(t, org.APIKey)
	byID := map[string]engine.Event{}
	for _, ev := range events {
		byID[ev.ID] = ev
	}
	for _, d := range got {
		ev, ok := byID[d.ID]
		if !ok {
			t.Fatalf("webhook-id %s is no event id of the log", d.ID)
		}
		if string(ev.Data) != string(d.Data) {
			t.Fatalf("data of %s differs from GET /events:\n%s\n%s", d.ID, d.Data, ev.Data)
		}
	}
	list := mustStatus(t, ts.do(t, "GET", "/webhooks", org.APIKey, nil), 200)
	if strings.Contains(string(list.Body), "whsec_") {
		t.Fatalf("GET /webhooks shows the secret: %s", list.Body)
	}
}

func TestWebhookRetriesKeepTheIDAndListAttempts(t *testing.T) {
	ts := newTestServer(t, allowPrivate, fastRetries)
	org := ts.newOrg(t, 0, 0)
	rcv := newReceiver(t)
	rcv.fail = func(n int) bool { return n <= 2 }
	ep := ts.registerWebhook(t, org.APIKey, rcv, engine.EventConversationUpdated)
	conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "PATCH", "/conversations/"+conv, org.APIKey, map[string]any{"status": "resolved"}), 200)
	got := rcv.waitDeliveries(t, 3)
	for _, d := range got {
		if d.ID != got[0].ID {
			t.Fatalf("webhook-ids %s and %s: a retry must keep the id", got[0].ID, d.ID)
		}
	}
	path := "/webhooks/" + ep["id"].(string) + "/deliveries"
	var page struct {
		Data []struct {
			ID       string `json:"id"`
			EventID  string `json:"event_id"`
			Status   string `json:"status"`
			Attempts []struct {
				Status       int    `json:"status"`
				Error        string `json:"error"`
				ResponseBody string `json:"response_body"`
			} `json:"attempts"`
		} `json:"data"`
	}
	testkit.WaitFor(t, "the delivery to be settled", func() bool {
		json.Unmarshal(mustStatus(t, ts.do(t, "GET", path, org.APIKey, nil), 200).Body, &page)
		return len(page.Data) == 1 && page.Data[0].Status == "succeeded"
	})
	d := page.Data[0]
	if d.EventID != got[0].ID || len(d.Attempts) != 3 {
		t.Fatalf("delivery %+v, want 3 attempts of event %s", d, got[0].ID)
	}
	if d.Attempts[0].Status != 204 || d.Attempts[1].Status != 500 || d.Attempts[2].Status != 500 {
		t.Fatalf("attempts newest first %+v, want 204, 500, 500", d.Attempts)
	}
	if !strings.Contains(d.Attempts[2].ResponseBody, "maintenance") || d.Attempts[2].Error == "" {
		t.Fatalf("a failed attempt keeps the error and the body: %+v", d.Attempts[2])
	}
}

func TestWebhookFailedScheduleThenManualRetry(t *testing.T) {
	ts := newTestServer(t, allowPrivate, func(c *Config) { c.WebhookRetrySchedule = "20ms,20ms" })
	org := ts.newOrg(t, 0, 0)
	rcv := newReceiver(t)
	var mu sync.Mutex
	down := true
	rcv.fail = func(int) bool { mu.Lock(); defer mu.Unlock(); return down }
	ep := ts.registerWebhook(t, org.APIKey, rcv)
	id := ep["id"].(string)
	conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey, `{"text":"hello"}`), 201)
	rcv.waitDeliveries(t, 3) // the first attempt and two retries
	var endpoints struct {
		Data []struct{ Status string } `json:"data"`
	}
	testkit.WaitFor(t, "the endpoint to be failing", func() bool {
		json.Unmarshal(ts.do(t, "GET", "/webhooks", org.APIKey, nil).Body, &endpoints)
		return len(endpoints.Data) == 1 && endpoints.Data[0].Status == "failing"
	})
	var page struct {
		Data []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		} `json:"data"`
	}
	json.Unmarshal(mustStatus(t, ts.do(t, "GET", "/webhooks/"+id+"/deliveries", org.APIKey, nil), 200).Body, &page)
	if len(page.Data) != 1 || page.Data[0].Status != "failed" {
		t.Fatalf("deliveries %+v, want one failed", page.Data)
	}
	if n := len(rcv.deliveries()); n != 3 {
		t.Fatalf("%d attempts after a schedule of two retries, want 3", n)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	r := mustStatus(t, ts.do(t, "POST", "/webhooks/"+id+"/deliveries/"+page.Data[0].ID+"/retry", org.APIKey, nil), 200).JSON(t)
	if r["status"] != "succeeded" || len(rcv.deliveries()) != 4 {
		t.Fatalf("manual retry answered %v after %d attempts", r, len(rcv.deliveries()))
	}
	json.Unmarshal(ts.do(t, "GET", "/webhooks", org.APIKey, nil).Body, &endpoints)
	if endpoints.Data[0].Status != "active" {
		t.Fatalf("a successful retry leaves the endpoint %s", endpoints.Data[0].Status)
	}
	again := ts.do(t, "POST", "/webhooks/"+id+"/deliveries/"+page.Data[0].ID+"/retry", org.APIKey, nil)
	if again.Status != 400 || again.ErrorCode(t) != engine.CodeInvalidState {
		t.Fatalf("retry of a succeeded delivery: %d %s", again.Status, again.Body)
	}
}

func TestWebhookFilterAndDelete(t *testing.T) {
	ts := newTestServer(t, allowPrivate, fastRetries)
	org := ts.newOrg(t, 0, 0)
	updates, all := newReceiver(t), newReceiver(t)
	ts.registerWebhook(t, org.APIKey, updates, engine.EventConversationUpdated)
	gone := ts.registerWebhook(t, org.APIKey, all)
	conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey, `{"text":"one"}`), 201)
	mustStatus(t, ts.do(t, "PATCH", "/conversations/"+conv, org.APIKey, map[string]any{"status": "resolved"}), 200)
	events := ts.events(t, org.APIKey)
	all.waitDeliveries(t, len(events))
	wantUpdates := 0
	for _, ev := range events {
		if ev.Type == engine.EventConversationUpdated {
			wantUpdates++
		}
	}
	updates.waitDeliveries(t, wantUpdates)
	mustStatus(t, ts.do(t, "DELETE", "/webhooks/"+gone["id"].(string), org.APIKey, nil), 200)
	// More events after the delete: the filtered endpoint gets the update, the deleted one nothing.
	mustStatus(t, ts.do(t, "PATCH", "/conversations/"+conv, org.APIKey, map[string]any{"status": "open"}), 200)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey, `{"text":"two"}`), 201)
	got := updates.waitDeliveries(t, wantUpdates+1)
	for _, d := range got {
		if d.Type != engine.EventConversationUpdated {
			t.Fatalf("an endpoint for conversation.updated got %s", d.Type)
		}
	}
	// The filtered endpoint has handled every event (its cursor is at the end) before we look
	// at the deleted one, which the same events would have reached by now.
	testkit.WaitFor(t, "the filtered endpoint to pass the last event", func() bool {
		return ts.hooks.KeepFrom(org.OrgID) > ts.events(t, org.APIKey)[len(ts.events(t, org.APIKey))-1].Offset
	})
	if n := len(all.deliveries()); n != len(events) {
		t.Fatalf("the deleted endpoint got %d deliveries, want the %d before its deletion", n, len(events))
	}
	if r := ts.do(t, "GET", "/webhooks/"+gone["id"].(string)+"/deliveries", org.APIKey, nil); r.Status != 404 {
		t.Fatalf("deliveries of a deleted endpoint: %d", r.Status)
	}
}

func TestWebhookHangingReceiverDoesNotDelayAnother(t *testing.T) {
	ts := newTestServer(t, allowPrivate, fastRetries)
	org := ts.newOrg(t, 0, 0)
	hanging, healthy := newReceiver(t), newReceiver(t)
	hanging.hold = make(chan struct{})
	ts.registerWebhook(t, org.APIKey, hanging)
	ts.registerWebhook(t, org.APIKey, healthy)
	conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	for i := range 5 {
		mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey, fmt.Sprintf(`{"text":"m%d"}`, i)), 201)
	}
	start := time.Now()
	healthy.waitDeliveries(t, 5)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the healthy endpoint took %s while another hung", d)
	}
	if n := len(hanging.deliveries()); n != 0 {
		t.Fatalf("the hanging receiver answered %d", n)
	}
	// The hanging endpoint still owes the first event: its age is the worst over endpoints.
	var age float64
	testkit.WaitFor(t, "the oldest owed event's age to show", func() bool {
		age = metricValue(t, ts.hc, ts.URL, "awardee_webhook_oldest_owed_age_seconds")
		return age > 0
	})
	// The receiver sees a delivery before the worker has counted its answer.
	testkit.WaitFor(t, "5 succeeded deliveries to be counted", func() bool {
		return metricValue(t, ts.hc, ts.URL, `awardee_webhook_deliveries_total{outcome="succeeded"}`) >= 5
	})
	if body := string(ts.do(t, "GET", "/metrics", "", nil).Body); strings.Contains(body, org.OrgID) || strings.Contains(body, "wh_") {
		t.Fatal("/metrics names an org or an endpoint")
	}
}

func TestWebhookRegistrationRefusesBadInput(t *testing.T) {
	ts := newTestServer(t, allowPrivate)
	org := ts.newOrg(t, 0, 0)
	for _, c := range []struct {
		body   any
		status int
		reason string
	}{
		{`{}`, 400, ""},
		{map[string]any{"url": "ftp://example.com/x"}, 422, "scheme"},
		{map[string]any{"url": "not a url"}, 422, "scheme"},
		{map[string]any{"url": "http://127.0.0.1:1/x", "events": []string{"message.deleted"}}, 400, ""},
		{map[string]any{"url": "http://127.0.0.1:1/x", "events": []string{}}, 400, ""},
	} {
		r := ts.do(t, "POST", "/webhooks", org.APIKey, c.body)
		if r.Status != c.status {
			t.Errorf("%v: %d %s, want %d", c.body, r.Status, r.Body, c.status)
			continue
		}
		var env struct {
			Error struct {
				Details map[string]any `json:"details"`
			} `json:"error"`
		}
		json.Unmarshal(r.Body, &env)
		if c.reason != "" && env.Error.Details["reason"] != c.reason {
			t.Errorf("%v: details %v, want reason %s", c.body, env.Error.Details, c.reason)
		}
	}
	list := ts.do(t, "GET", "/webhooks", org.APIKey, nil).JSON(t)
	if n := len(list["data"].([]any)); n != 0 {
		t.Fatalf("refused registrations left %d endpoints", n)
	}
}

func TestEventRetentionShorterThanScheduleRefused(t *testing.T) {
	cfg := defaultConfig()
	cfg.WebhookRetrySchedule = "1h,2h"
	cfg.EventRetention = 3 * time.Hour // the schedule can take 3.6 h with jitter
	err := cfg.validate()
	if err == nil || !strings.Contains(err.Error(), "--event-retention") {
		t.Fatalf("validate: %v, want a refusal naming --event-retention", err)
	}
	cfg.EventRetention = 4 * time.Hour
	if err := cfg.validate(); err != nil {
		t.Fatalf("a retention longer than the schedule is refused: %v", err)
	}
}

// TestPrunerKeepsOwedEvents runs the real maintenance loop with a retention shorter than the
// test: an event parked for a retry (with those after it) and the events behind a hanging
// receiver's cursor stay in the log while events nobody owes are pruned.
func TestPrunerKeepsOwedEvents(t *testing.T) {
	ts := newTestServer(t, allowPrivate, func(c *Config) {
		c.WebhookRetrySchedule = "1s"
		c.EventRetention = 1500 * time.Millisecond
		c.SweepEvery = 20 * time.Millisecond
	})
	parked, stuck, none := ts.newOrg(t, 0, 0), ts.newOrg(t, 0, 0), ts.newOrg(t, 0, 0)
	refusing, hanging := newReceiver(t), newReceiver(t)
	refusing.fail = func(n int) bool {
		d := refusing.got[n-1] // called with the receiver's lock held
		return strings.Contains(string(d.Data), `"text":"owed"`)
	}
	hanging.hold = make(chan struct{})
	ts.registerWebhook(t, parked.APIKey, refusing)
	ts.registerWebhook(t, stuck.APIKey, hanging)
	post := func(key, conv, text string) {
		mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", key, map[string]any{"text": text}), 201)
	}
	convs := map[string]string{}
	for _, org := range []testOrg{parked, stuck, none} {
		convs[org.APIKey] = ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	}
	post(parked.APIKey, convs[parked.APIKey], "owed")
	for _, org := range []testOrg{parked, stuck, none} {
		post(org.APIKey, convs[org.APIKey], "one")
		post(org.APIKey, convs[org.APIKey], "two")
	}
	offsets := func(key string) []uint64 {
		var out []uint64
		for _, ev := range ts.events(t, key) {
			out = append(out, ev.Offset)
		}
		return out
	}
	testkit.WaitFor(t, "the events nobody owes to be pruned", func() bool {
		return len(offsets(none.APIKey)) == 0
	})
	// The pruner stops at the oldest owed event: a log is kept as one contiguous range.
	if got := offsets(parked.APIKey); len(got) != 3 {
		t.Fatalf("the parked org's log keeps %v, want the owed event 1 and those after it", got)
	}
	if got := offsets(stuck.APIKey); len(got) != 2 {
		t.Fatalf("the log behind a hanging receiver keeps %v, want both events", got)
	}
}

func TestWebhookCreateIsIdempotentAndUncached(t *testing.T) {
	ts := newTestServer(t, allowPrivate)
	org := ts.newOrg(t, 0, 0)
	body := map[string]any{"url": "http://127.0.0.1:1/hook"}
	first := mustStatus(t, ts.do(t, "POST", "/webhooks", org.APIKey, body, "Idempotency-Key", "hook-1"), 201)
	if cc := first.Header.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("the answer showing the secret has Cache-Control %q", cc)
	}
	again := mustStatus(t, ts.do(t, "POST", "/webhooks", org.APIKey, body, "Idempotency-Key", "hook-1"), 201)
	if string(again.Body) != string(first.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay %s, want the first answer %s replayed", again.Body, first.Body)
	}
	list := ts.do(t, "GET", "/webhooks", org.APIKey, nil).JSON(t)
	if n := len(list["data"].([]any)); n != 1 {
		t.Fatalf("%d endpoints after a replayed POST, want 1", n)
	}
}

func TestWebhookDeliveriesPage(t *testing.T) {
	ts := newTestServer(t, allowPrivate)
	org := ts.newOrg(t, 0, 0)
	rcv := newReceiver(t)
	ep := ts.registerWebhook(t, org.APIKey, rcv)
	conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	for i := range 3 {
		mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey, fmt.Sprintf(`{"text":"m%d"}`, i)), 201)
	}
	rcv.waitDeliveries(t, 3)
	path := "/webhooks/" + ep["id"].(string) + "/deliveries?limit=2"
	var offsets []float64
	testkit.WaitFor(t, "three deliveries listed", func() bool {
		offsets = nil
		cursor := ""
		for range 3 {
			var page struct {
				Data       []map[string]any `json:"data"`
				NextCursor *string          `json:"next_cursor"`
			}
			json.Unmarshal(mustStatus(t, ts.do(t, "GET", path+cursor, org.APIKey, nil), 200).Body, &page)
			for _, d := range page.Data {
				offsets = append(offsets, d["offset"].(float64))
			}
			if page.NextCursor == nil {
				break
			}
			cursor = "&cursor=" + *page.NextCursor
		}
		return len(offsets) == 3
	})
	if offsets[0] != 3 || offsets[1] != 2 || offsets[2] != 1 {
		t.Fatalf("deliveries by offset %v, want newest first: 3, 2, 1", offsets)
	}
	if r := ts.do(t, "GET", path+"&cursor=whd_nonsense", org.APIKey, nil); r.Status != 400 {
		t.Fatalf("a bad cursor: %d %s", r.Status, r.Body)
	}
	other := ts.newOrg(t, 0, 0)
	if r := ts.do(t, "GET", path, other.APIKey, nil); r.Status != 404 {
		t.Fatalf("another org's endpoint: %d", r.Status)
	}
}

func TestWebhookPrivateURLRefusedWithoutTheFlag(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	rcv := newReceiver(t)
	for _, url := range []string{rcv.srv.URL, "http://localhost:8080/hook", "http://10.1.2.3/hook", "http://[::1]/hook", "http://2130706433/hook"} {
		r := ts.do(t, "POST", "/webhooks", org.APIKey, map[string]any{"url": url})
		var env struct {
			Error struct {
				Code    string         `json:"code"`
				Details map[string]any `json:"details"`
			} `json:"error"`
		}
		json.Unmarshal(r.Body, &env)
		if r.Status != 422 || env.Error.Code != engine.CodeInvalidPayload || env.Error.Details["reason"] != "unsafe_host" {
			t.Errorf("%s: %d %s, want 422 invalid_payload with reason unsafe_host", url, r.Status, r.Body)
		}
	}
	list := ts.do(t, "GET", "/webhooks", org.APIKey, nil).JSON(t)
	if n := len(list["data"].([]any)); n != 0 {
		t.Fatalf("refused URLs left %d endpoints", n)
	}
}
