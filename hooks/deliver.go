package hooks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/awardee/awardee/engine"
)

const (
	// maxJitter is the largest share by which a retry delay is moved either way, so that
	// receivers coming back from an outage are not hit by every sender in the same second.
	maxJitter = 0.2
	// responseKept is how much of a receiver's answer an attempt keeps.
	responseKept = 1 << 10
	// pageSize is how many events a worker reads from the log at a time.
	pageSize = 100
	// idleRecheck bounds a worker's sleep, so that a clock stepped by a test or a missed wake-up
	// costs at most this much delay.
	idleRecheck = 5 * time.Second
	// errorBackoff is the pause after a storage error before a worker tries again.
	errorBackoff = time.Second
	// batchMax and batchWindow bound how many first attempts, and for how long, go unrecorded
	// before one write records them and moves the cursor.
	batchMax    = 64
	batchWindow = 200 * time.Millisecond
)

// worker delivers one endpoint's events, one at a time, so that they go out in offset order.
type worker struct {
	s      *Service
	ep     endpointRecord
	types  map[string]bool // nil: every type
	key    []byte
	client *http.Client
	cancel context.CancelFunc
	done   chan struct{}
}

func newWorker(s *Service, ep endpointRecord, cancel context.CancelFunc) *worker {
	w := &worker{s: s, ep: ep, cancel: cancel, done: make(chan struct{}), key: signingKey(ep.Secret)}
	if !allTypes(ep.EventTypes) {
		w.types = map[string]bool{}
		for _, t := range ep.EventTypes {
			w.types[t] = true
		}
	}
	w.client = s.newClient()
	return w
}

func (w *worker) stop() { w.cancel() }

func (w *worker) run(ctx context.Context) {
	defer close(w.done)
	defer w.client.CloseIdleConnections()
	for {
		// Take the wake-up channel before reading the log, so that a commit after the read
		// still wakes the wait below.
		wake := w.s.db.Notify()
		next, err := w.step(ctx)
		if ctx.Err() != nil || errors.Is(err, errEndpointGone) {
			return
		}
		wait := idleRecheck
		switch {
		case err != nil:
			w.s.opts.Log.Error("webhooks: delivery", "endpoint", w.ep.ID, "err", err)
			wait = errorBackoff
		case !next.IsZero():
			wait = min(wait, next.Sub(w.s.opts.Now()))
		}
		if wait <= 0 {
			continue
		}
		timer := time.NewTimer(wait)
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
	}
}

func (w *worker) wants(eventType string) bool { return w.types == nil || w.types[eventType] }

// step sends the retries that are due, then the events after the cursor (one page). It returns
// when the next retry is due (zero when none waits), or now when more events wait.
func (w *worker) step(ctx context.Context) (time.Time, error) {
	var next time.Time
	earliest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	// The endpoint may have been deleted since this worker was started; stop before sending.
	if err := w.s.db.ViewBucket(bucketEndpoints, func(b engine.Bucket) error {
		_, err := getEndpoint(b, w.ep.OrgID, w.ep.ID)
		return err
	}); err != nil {
		return time.Time{}, err
	}
	pending, err := w.s.owed(w.ep.OrgID, w.ep.ID, true)
	if err != nil {
		return time.Time{}, err
	}
	for _, e := range pending {
		if e.Due.After(w.s.opts.Now()) {
			earliest(e.Due)
			continue
		}
		due, err := w.retry(ctx, e)
		if err != nil {
			return time.Time{}, err
		}
		if !due.IsZero() {
			earliest(due)
		}
	}

	cursor, err := w.s.cursor(w.ep.OrgID, w.ep.ID)
	if err != nil {
		return time.Time{}, err
	}
	events, more, err := w.s.db.ListEvents(w.ep.OrgID, cursor, pageSize)
	if err != nil {
		return time.Time{}, err
	}
	// First attempts are recorded in batches: one write moves the cursor past a run of events
	// and stores their deliveries, so the rate is not one fsync per event. A crash before the
	// write sends the run again (at least once); the batch is bounded in count and in time so
	// that the deliveries list and the cursor stay close behind the receiver.
	var batch []*Delivery
	handled, batchStart := cursor, time.Time{}
	flush := func() error {
		if handled == cursor {
			return nil
		}
		// Attempts already made are recorded even when ctx ended: the commit loop outlives
		// the workers, and what is recorded is not sent again.
		err := w.update(context.WithoutCancel(ctx), func(bs buckets, ep *endpointRecord) error {
			if err := bs.cursors.Put(endpointKey(w.ep.OrgID, w.ep.ID), u64(handled)); err != nil {
				return err
			}
			succeeded := false
			for _, d := range batch {
				if err := putJSON(bs.deliveries, deliveryKey(w.ep.OrgID, w.ep.ID, d.ID), d); err != nil {
					return err
				}
				if d.Status == DeliveryPending {
					if err := putOwed(bs.owed, w.ep.OrgID, w.ep.ID, owedEntry{Offset: d.Offset, DeliveryID: d.ID, Pending: true, Due: d.NextAttemptAt.Time}); err != nil {
						return err
					}
				} else {
					succeeded = true
				}
			}
			if succeeded {
				return setStatus(bs, ep, StatusActive)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, d := range batch {
			w.s.m.delivered(d.Status)
		}
		batch, cursor = batch[:0], handled
		return nil
	}
	for _, ev := range events {
		if w.wants(ev.Type) {
			d, ok := w.firstAttempt(ctx, ev)
			if !ok {
				return time.Time{}, errors.Join(ctx.Err(), flush())
			}
			if d.NextAttemptAt != nil {
				earliest(d.NextAttemptAt.Time)
			}
			if len(batch) == 0 {
				batchStart = time.Now()
			}
			batch = append(batch, d)
		}
		handled = ev.Offset
		if len(batch) == batchMax || (len(batch) > 0 && time.Since(batchStart) >= batchWindow) {
			if err := flush(); err != nil {
				return time.Time{}, err
			}
		}
	}
	if err := flush(); err != nil {
		return time.Time{}, err
	}
	if more {
		return w.s.opts.Now(), nil
	}
	return next, nil
}

// update runs fn in one unit with the endpoint's record, which must still exist: a deleted
// endpoint's worker stops at its next write.
func (w *worker) update(ctx context.Context, fn func(bs buckets, ep *endpointRecord) error) error {
	return w.s.db.Update(ctx, func(tx *engine.Tx) error {
		bs, err := openBuckets(tx)
		if err != nil {
			return err
		}
		ep, err := getEndpoint(bs.endpoints, w.ep.OrgID, w.ep.ID)
		if err != nil {
			return err
		}
		return fn(bs, ep)
	})
}

// setStatus stores the endpoint's status when it changed.
func setStatus(bs buckets, ep *endpointRecord, status string) error {
	if ep.Status == status {
		return nil
	}
	ep.Status = status
	return putJSON(bs.endpoints, endpointKey(ep.OrgID, ep.ID), ep)
}

// firstAttempt makes an event's first attempt and returns its delivery, to be recorded with
// the cursor; a failure makes it pending, due for its first retry. ok is false when ctx ended.
func (w *worker) firstAttempt(ctx context.Context, ev engine.Event) (*Delivery, bool) {
	att, ok := w.attempt(ctx, ev)
	if !ok {
		return nil, false
	}
	now := w.s.opts.Now()
	d := &Delivery{ID: newID(PrefixDelivery), EndpointID: w.ep.ID, EventID: ev.ID, EventType: ev.Type, Offset: ev.Offset,
		Status: DeliverySucceeded, Attempts: []Attempt{att}, CreatedAt: stamp(now)}
	if !success(att) {
		d.Status = DeliveryPending
		t := stamp(now.Add(jittered(w.s.opts.Schedule[0])))
		d.NextAttemptAt = &t
	}
	return d, true
}

// retry makes a pending delivery's next attempt and records it: success settles it, failure
// schedules the next delay or, after the last, fails the delivery and marks the endpoint failing.
func (w *worker) retry(ctx context.Context, owed owedEntry) (time.Time, error) {
	ev, found, err := w.s.event(w.ep.OrgID, owed.Offset)
	if err != nil {
		return time.Time{}, err
	}
	var att Attempt
	if found {
		var ok bool
		if att, ok = w.attempt(ctx, ev); !ok {
			return time.Time{}, ctx.Err()
		}
	} else {
		att = Attempt{At: stamp(w.s.opts.Now()), Error: "the event is no longer in the log"}
	}
	var due time.Time
	var outcome string
	err = w.update(ctx, func(bs buckets, ep *endpointRecord) error {
		cur, err := getDelivery(bs.deliveries, w.ep.OrgID, w.ep.ID, owed.DeliveryID)
		if err != nil || cur.Status != DeliveryPending {
			return err // settled meanwhile (or pruned): nothing to record
		}
		cur.Attempts = append([]Attempt{att}, cur.Attempts...)
		cur.NextAttemptAt = nil
		status := StatusActive
		switch {
		case success(att):
			cur.Status = DeliverySucceeded
			if err := bs.owed.Delete(owedKey(w.ep.OrgID, w.ep.ID, cur.Offset)); err != nil {
				return err
			}
		case found && len(cur.Attempts) <= len(w.s.opts.Schedule):
			due = w.s.opts.Now().Add(jittered(w.s.opts.Schedule[len(cur.Attempts)-1]))
			t := stamp(due)
			cur.NextAttemptAt = &t
			status = ep.Status
			if err := putOwed(bs.owed, w.ep.OrgID, w.ep.ID, owedEntry{Offset: cur.Offset, DeliveryID: cur.ID, Pending: true, Due: due}); err != nil {
				return err
			}
		default:
			cur.Status = DeliveryFailed
			status = StatusFailing
			if err := putOwed(bs.owed, w.ep.OrgID, w.ep.ID, owedEntry{Offset: cur.Offset, DeliveryID: cur.ID}); err != nil {
				return err
			}
		}
		outcome = cur.Status
		if err := putJSON(bs.deliveries, deliveryKey(w.ep.OrgID, w.ep.ID, cur.ID), cur); err != nil {
			return err
		}
		return setStatus(bs, ep, status)
	})
	if err == nil && outcome != "" {
		w.s.m.delivered(outcome)
	}
	return due, err
}

// event reads one event of orgID's log by its offset.
func (s *Service) event(orgID string, offset uint64) (engine.Event, bool, error) {
	if offset == 0 {
		return engine.Event{}, false, nil
	}
	evs, _, err := s.db.ListEvents(orgID, offset-1, 1)
	if err != nil || len(evs) == 0 || evs[0].Offset != offset {
		return engine.Event{}, false, err
	}
	return evs[0], true, nil
}

func success(a Attempt) bool { return a.Status >= 200 && a.Status < 300 && a.Error == "" }

// jittered moves d by up to maxJitter either way.
func jittered(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (1 + maxJitter*(2*rand.Float64()-1)))
}

// attempt sends ev once, holding one of the pool's slots. ok is false when ctx ended first: the
// attempt was cut short by shutdown or deletion, which says nothing of the receiver.
func (w *worker) attempt(ctx context.Context, ev engine.Event) (Attempt, bool) {
	select {
	case w.s.sem <- struct{}{}:
	case <-ctx.Done():
		return Attempt{}, false
	}
	defer func() { <-w.s.sem }()
	att := send(ctx, w.s, w.client, w.ep.URL, w.key, ev)
	if ctx.Err() != nil {
		return Attempt{}, false
	}
	return att, true
}

// send posts one signed delivery of ev and reports how it went.
func send(ctx context.Context, s *Service, client *http.Client, url string, key []byte, ev engine.Event) Attempt {
	at := s.opts.Now()
	att := Attempt{At: stamp(at)}
	body := Payload(ev)
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		att.Error = "the URL cannot be requested: " + err.Error()
		return att
	}
	ts := strconv.FormatInt(at.Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Awardee-Webhooks/1")
	req.Header.Set("webhook-id", ev.ID)
	req.Header.Set("webhook-timestamp", ts)
	req.Header.Set("webhook-signature", Sign(key, ev.ID, ts, body))
	start := time.Now()
	res, err := client.Do(req)
	if err == nil {
		var kept []byte
		kept, err = io.ReadAll(io.LimitReader(res.Body, responseKept))
		// Drain a little more so that the connection can be reused, but never wait on a
		// receiver that streams forever.
		io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
		res.Body.Close()
		att.Status = res.StatusCode
		att.ResponseBody = strings.ToValidUTF8(string(kept), "\uFFFD")
	}
	latency := time.Since(start)
	att.LatencyMS = latency.Milliseconds()
	switch {
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		att.Error = fmt.Sprintf("no answer within %s", s.opts.Timeout)
	case err != nil:
		att.Error = err.Error()
	case att.Status < 200 || att.Status > 299:
		att.Error = fmt.Sprintf("the receiver answered HTTP %d", att.Status)
	}
	s.m.attempted(latency, success(att))
	return att
}

// Payload is the body of every delivery of ev: {"type","timestamp","data"}, data being the
// event's data as GET /events shows it and timestamp the event's creation.
func Payload(ev engine.Event) []byte {
	b := make([]byte, 0, 64+len(ev.Data))
	b = append(b, `{"type":"`...)
	b = append(b, ev.Type...)
	b = append(b, `","timestamp":`...)
	ts, _ := ev.CreatedAt.MarshalJSON()
	b = append(b, ts...)
	b = append(b, `,"data":`...)
	b = append(b, ev.Data...)
	return append(b, '}')
}

// Sign is the Standard Webhooks signature header: "v1," and the base64 HMAC-SHA256, under the
// decoded secret, of id.timestamp.body.
func Sign(key []byte, id, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id))
	mac.Write([]byte{'.'})
	mac.Write([]byte(timestamp))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// newClient is one endpoint's client: its own connection pool, every connection opened by the
// given dialer, no redirects followed (a redirect is not a 2xx, and following one would let a
// receiver send the request where registration never looked).
func (s *Service) newClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           s.opts.DialContext,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: s.opts.Timeout,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
