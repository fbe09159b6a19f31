package hooks

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/oklog/ulid/v2"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

func TestSignMatchesTheOfficialLibrary(t *testing.T) {
	secret := newSecret()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1_700_000_000, 0)
	body := []byte(`{"type":"message.created","timestamp":"2026-01-01T00:00:00.000Z","data":{}}`)
	want, err := wh.Sign("evt_01", at, body)
	if err != nil {
		t.Fatal(err)
	}
	if got := Sign(signingKey(secret), "evt_01", strconv.FormatInt(at.Unix(), 10), body); got != want {
		t.Fatalf("Sign = %s, the library signs %s", got, want)
	}
}

func TestJitterStaysWithinTwentyPercent(t *testing.T) {
	const d = time.Second
	lo, hi := d, d
	for range 2000 {
		j := jittered(d)
		if j < d*8/10 || j > d*12/10 {
			t.Fatalf("jittered(1s) = %s, beyond ±20 %%", j)
		}
		lo, hi = min(lo, j), max(hi, j)
	}
	if lo > d*95/100 || hi < d*105/100 {
		t.Fatalf("2000 jittered delays span only %s..%s: the jitter is missing", lo, hi)
	}
}

func TestDeliveryKeysSortNewestFirst(t *testing.T) {
	older := PrefixDelivery + ulid.MustNew(1_000, ulid.DefaultEntropy()).String()
	newer := PrefixDelivery + ulid.MustNew(2_000, ulid.DefaultEntropy()).String()
	a, b := deliveryKey("org", "ep", older), deliveryKey("org", "ep", newer)
	if string(b) >= string(a) {
		t.Fatal("the newer delivery's key does not sort first")
	}
	if got := deliveryKeyTime(a); !got.Equal(time.UnixMilli(1_000)) {
		t.Fatalf("deliveryKeyTime = %s, want the id's time", got)
	}
}

// steppedClock is real time plus an offset a test can add to, so that due retries still come
// due by themselves while retention cutoffs can be jumped over.
type steppedClock struct{ offset atomic.Int64 }

func (c *steppedClock) Now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

func (c *steppedClock) Step(d time.Duration) { c.offset.Add(int64(d)) }

// TestAttemptsArePrunedAfterRetention runs a Service on a real database: a failed delivery and
// a succeeded one are both listed until the clock passes the retention, then both are gone and
// the failed one no longer keeps its event from the pruner; a delivery made after the step stays.
func TestAttemptsArePrunedAfterRetention(t *testing.T) {
	db, err := engine.Open(t.TempDir(), engine.Options{Buckets: Buckets})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	clock := &steppedClock{}
	svc, err := New(Options{DB: db, DialContext: (&net.Dialer{}).DialContext,
		CheckURL: func(context.Context, string) error { return nil },
		Schedule: []time.Duration{time.Millisecond}, Now: clock.Now,
		AttemptRetention: time.Hour, SweepEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	running.Go(func() { svc.Run(ctx) })
	defer running.Wait()
	defer cancel()

	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer up.Close()
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
	defer down.Close()
	org, err := db.CreateOrg(ctx, engine.NewOrg{Name: "hooks"})
	if err != nil {
		t.Fatal(err)
	}
	good, _, err := svc.Create(ctx, org.OrgID, NewEndpoint{URL: &up.URL}, nil)
	if err != nil {
		t.Fatal(err)
	}
	bad, _, err := svc.Create(ctx, org.OrgID, NewEndpoint{URL: &down.URL}, nil)
	if err != nil {
		t.Fatal(err)
	}
	conv, _, err := db.CreateConversation(ctx, org.OrgID, engine.NewConversation{Status: engine.StatusOpen}, nil)
	if err != nil {
		t.Fatal(err)
	}
	post := func(text string) {
		if _, _, err := db.PostMessage(ctx, engine.NewMessage{OrgID: org.OrgID, ConversationID: conv.Conversation.ID, Author: engine.AuthorAgent, Text: text}, nil); err != nil {
			t.Fatal(err)
		}
	}
	statuses := func(ep Endpoint) []string {
		page, err := svc.Deliveries(org.OrgID, ep.ID, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range page.Data {
			out = append(out, d.Status)
		}
		return out
	}
	settled := func(ep Endpoint, want ...string) func() bool {
		return func() bool {
			got := statuses(ep)
			if len(got) != len(want) {
				return false
			}
			for i := range got {
				if got[i] != want[i] {
					return false
				}
			}
			return true
		}
	}
	post("first")
	waitUntil(t, "one succeeded and one failed delivery", func() bool {
		return settled(good, DeliverySucceeded)() && settled(bad, DeliveryFailed)()
	})
	if keep := svc.KeepFrom(org.OrgID); keep != 1 {
		t.Fatalf("KeepFrom = %d while a failed delivery of event 1 is kept", keep)
	}
	clock.Step(2 * time.Hour)
	post("second")
	waitUntil(t, "the old deliveries to be pruned", func() bool {
		return settled(good, DeliverySucceeded)() && settled(bad, DeliveryFailed)() &&
			svc.KeepFrom(org.OrgID) == 2
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
