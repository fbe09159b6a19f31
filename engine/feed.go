package engine

import (
	"context"
	"slices"
	"strings"
	"sync"
)

// The feed is how consumers (the realtime hub, webhook workers) learn of committed events. The
// commit loop never runs consumer code: after each fsync it appends the batch's events to a
// bounded in-memory ring and closes the current notification channel, which cannot block. Each
// consumer reads from its own position at its own pace; one that falls further behind than the
// ring holds is told so (ErrFellBehind) and catches up from the durable log with ListEvents,
// which holds every event the ring ever held.

// The ring's bounds: how far behind a consumer may fall before it must re-read the log, and the
// memory it can pin (events carry whole messages, so a count alone would not bound it).
const (
	feedCapacity = 8192
	feedMaxBytes = 32 << 20
)

// ErrFellBehind is returned by Subscription.Next when the subscriber fell so far behind that
// events it had not read left the ring. It must catch up from the log (ListEvents, by each org's
// offset) before reading the feed again; the subscription continues at the feed's head.
var ErrFellBehind = Errorf(CodeUnavailable, "the consumer fell behind the event feed")

type feed struct {
	mu      sync.Mutex
	ring    [feedCapacity]Event
	head    uint64 // events published since Open
	tail    uint64 // the ring holds positions (tail, head]
	bytes   int    // data bytes of the events in the ring
	notify  chan struct{}
	subs    map[*Subscription]struct{}
	dropped map[string]uint64 // by subscriber name, kept after a subscription closes
}

func newFeed() *feed {
	return &feed{notify: make(chan struct{}), subs: make(map[*Subscription]struct{}), dropped: make(map[string]uint64)}
}

// publish appends a committed batch's events, in offset order, and wakes every waiter.
func (f *feed) publish(events []Event) {
	if len(events) == 0 {
		return
	}
	f.mu.Lock()
	// The byte bound evicts only events of earlier batches: a batch's own events are always
	// there for subscribers to read, however large the batch, so one org's big batch cannot push
	// every consumer behind the ring at once. A batch is bounded by MaxBatch units, and so the
	// ring's bytes by its last batch plus feedMaxBytes.
	batchStart := f.head
	for _, ev := range events {
		if f.head-f.tail == feedCapacity {
			f.evictOldest()
		}
		f.head++
		f.ring[f.head%feedCapacity] = ev
		f.bytes += len(ev.Data)
		for f.bytes > feedMaxBytes && f.tail < batchStart {
			f.evictOldest()
		}
	}
	close(f.notify)
	f.notify = make(chan struct{})
	f.mu.Unlock()
}

func (f *feed) evictOldest() {
	f.tail++
	slot := &f.ring[f.tail%feedCapacity]
	f.bytes -= len(slot.Data)
	*slot = Event{} // let the evicted event's data be collected
}

// Notify returns a channel that is closed after the next commit that appends events. It is the
// wake-up of consumers that read the durable log themselves (a webhook worker following its
// cursor): take the channel, read the log, then wait on the channel, and no commit is missed.
func (db *DB) Notify() <-chan struct{} {
	db.feed.mu.Lock()
	defer db.feed.mu.Unlock()
	return db.feed.notify
}

// Subscription is one consumer's position in the feed. Its methods are for one goroutine.
type Subscription struct {
	feed   *feed
	name   string
	pos    uint64 // the feed position of the last event read
	closed bool
}

// Subscribe starts a subscription at the feed's head: every event committed after Subscribe
// returns is delivered by Next, in commit order (which is offset order within each org), exactly
// once, unless the subscriber falls behind. name labels its lag in FeedStats.
func (db *DB) Subscribe(name string) *Subscription {
	f := db.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &Subscription{feed: f, name: name, pos: f.head}
	f.subs[s] = struct{}{}
	return s
}

// Close ends the subscription; its lag no longer counts.
func (s *Subscription) Close() {
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	delete(s.feed.subs, s)
	s.closed = true
}

// Next returns the events committed since the last call, at most max of them, waiting until
// there is at least one or ctx ends. ErrFellBehind means events were lost to the ring: the
// subscription then continues at the head, and the caller must re-read the log.
func (s *Subscription) Next(ctx context.Context, max int) ([]Event, error) {
	if max < 1 {
		max = 1
	}
	f := s.feed
	for {
		f.mu.Lock()
		if s.closed {
			f.mu.Unlock()
			return nil, errShuttingDown
		}
		if s.pos < f.tail {
			s.pos = f.head
			f.dropped[s.name]++
			f.mu.Unlock()
			return nil, ErrFellBehind
		}
		if f.head > s.pos {
			n := min(f.head-s.pos, uint64(max))
			out := make([]Event, 0, n)
			for p := s.pos + 1; p <= s.pos+n; p++ {
				out = append(out, f.ring[p%feedCapacity])
			}
			s.pos += n
			f.mu.Unlock()
			return out, nil
		}
		wait := f.notify
		f.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// FeedStats is one subscriber name's standing: the events published but not yet read by its
// slowest subscription, and how many times its subscriptions fell behind the ring.
type FeedStats struct {
	Name    string
	Lag     uint64
	Dropped uint64
}

// FeedStats reports every subscriber name's lag and drops, for /metrics.
func (db *DB) FeedStats() []FeedStats {
	f := db.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	byName := map[string]*FeedStats{}
	for name, n := range f.dropped {
		byName[name] = &FeedStats{Name: name, Dropped: n}
	}
	for s := range f.subs {
		st, ok := byName[s.name]
		if !ok {
			st = &FeedStats{Name: s.name}
			byName[s.name] = st
		}
		st.Lag = max(st.Lag, f.head-s.pos)
	}
	out := make([]FeedStats, 0, len(byName))
	for _, st := range byName {
		out = append(out, *st)
	}
	slices.SortFunc(out, func(a, b FeedStats) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ResumeFrom judges a consumer's request to resume orgID's events after an offset (the realtime
// resume_after): an offset beyond the latest one ever given is a validation error (the client
// holds a position this log never had), and resync is true when events after it were already
// pruned, so a replay from the log would have a gap.
func (db *DB) ResumeFrom(orgID string, after uint64) (resync bool, err error) {
	oldest, latest, err := db.LogBounds(orgID)
	if err != nil {
		return false, err
	}
	if after > latest {
		return false, Errorf(CodeValidation, "resume_after %d is beyond the latest offset %d", after, latest).
			WithDetails(map[string]any{"field": "resume_after", "latest": latest})
	}
	kept := oldest
	if kept == 0 { // an empty log keeps everything after latest
		kept = latest + 1
	}
	return after+1 < kept, nil
}
