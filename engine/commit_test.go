package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/awardee/awardee/internal/testkit"
	bolt "go.etcd.io/bbolt"
)

// These tests drive the group-commit loop with units of their own that write to a bucket of
// their own, so that what is checked is the loop's contract (batching, isolation of a failing
// unit, answers, publication, shutdown) and not any domain rule.

var testBucket = []byte("test")

func createTestBucket(tb testing.TB, db *DB) {
	tb.Helper()
	err := db.Update(context.Background(), func(tx *Tx) error {
		_, err := tx.bolt.CreateBucketIfNotExists(testBucket)
		return err
	})
	if err != nil {
		tb.Fatalf("create test bucket: %v", err)
	}
}

// putUnit writes key → key into the test bucket.
func putUnit(key []byte) Unit {
	return func(tx *Tx) error { return tx.bolt.Bucket(testBucket).Put(key, key) }
}

// testKeys returns every key of the test bucket as read from a committed state.
func testKeys(tb testing.TB, db *DB) map[string]bool {
	tb.Helper()
	keys := map[string]bool{}
	err := db.bolt.View(func(btx *bolt.Tx) error {
		return btx.Bucket(testBucket).ForEach(func(k, v []byte) error {
			if string(k) != string(v) {
				return fmt.Errorf("key %q holds %q", k, v)
			}
			keys[string(k)] = true
			return nil
		})
	})
	if err != nil {
		tb.Fatalf("read test bucket: %v", err)
	}
	return keys
}

// holdCommitLoop parks db's commit loop inside a unit until release (see testkit.HoldCommitLoop).
func holdCommitLoop(tb testing.TB, db *DB) (release func()) {
	tb.Helper()
	return testkit.HoldCommitLoop(tb, func(block func()) error {
		return db.Update(context.Background(), func(*Tx) error {
			block()
			return nil
		})
	})
}

// submitInOrder starts one Update per unit and waits until each sits in the commit queue before
// starting the next, so that the next batch runs them in exactly this order. The loop must be
// held, or the queue drains under it.
func submitInOrder(tb testing.TB, db *DB, units []Unit) []chan error {
	tb.Helper()
	calls := make([]func() error, len(units))
	for i, u := range units {
		calls[i] = func() error { return db.Update(context.Background(), u) }
	}
	return submitCalls(tb, db, calls)
}

// submitCalls is submitInOrder for engine calls that each submit one unit (PostMessage,
// UpdateConversation…), so that races between them can be staged in a chosen order.
func submitCalls(tb testing.TB, db *DB, calls []func() error) []chan error {
	tb.Helper()
	base := db.Queued()
	results := make([]chan error, len(calls))
	for i, call := range calls {
		ch := make(chan error, 1)
		results[i] = ch
		go func() { ch <- call() }()
		testkit.WaitFor(tb, fmt.Sprintf("unit %d to be queued", i), func() bool { return db.Queued() == base+i+1 })
	}
	return results
}

// (a) Many concurrent callers: every Update answers nil only for a write that is on disk, and
// the loop really groups them (fewer fsync'd batches than units), which is where throughput comes
// from.
func TestUpdateManyConcurrentUnits(t *testing.T) {
	const writers, perWriter = 64, 50
	db := openTestDB(t)
	createTestBucket(t, db)

	before := db.CommitStats()
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			<-gate
			for u := range perWriter {
				key := fmt.Appendf(nil, "w%02d-u%02d", w, u)
				if err := db.Update(context.Background(), putUnit(key)); err != nil {
					t.Errorf("writer %d unit %d: %v", w, u, err)
					return
				}
			}
		})
	}
	close(gate)
	testkit.WaitAll(t, "all writers", &wg)

	keys := testKeys(t, db)
	if len(keys) != writers*perWriter {
		t.Errorf("%d keys stored, want %d", len(keys), writers*perWriter)
	}
	for w := range writers {
		for u := range perWriter {
			if k := fmt.Sprintf("w%02d-u%02d", w, u); !keys[k] {
				t.Fatalf("key %s missing after its Update returned nil", k)
			}
		}
	}
	after := db.CommitStats()
	units, batches := after.Units-before.Units, after.Batches-before.Batches
	if units != writers*perWriter || after.Failed != before.Failed {
		t.Errorf("commit stats counted %d units and %d failures, want %d and 0", units, after.Failed-before.Failed, writers*perWriter)
	}
	if batches >= units {
		t.Errorf("%d batches for %d units: the loop never grouped units into one commit", batches, units)
	}
	t.Logf("%d units in %d batches", units, batches)
}

// (b, c) A unit that fails (by error or by panic) after writing is answered with its own error,
// nothing of it is kept, and every neighbour of its batch still commits. The run counts prove the
// units shared one batch: those before the failing one ran twice (the batch was re-run without
// it), the others once.
func TestUpdateFailingUnitSparesBatch(t *testing.T) {
	errBad := errors.New("this unit refuses")
	kinds := []struct {
		name  string
		fail  func() error
		check func(t *testing.T, err error)
	}{
		{
			name: "error",
			fail: func() error { return errBad },
			check: func(t *testing.T, err error) {
				if !errors.Is(err, errBad) {
					t.Errorf("failing unit got %v, want its own error", err)
				}
			},
		},
		{
			name: "panic",
			fail: func() error { panic("unit exploded") },
			check: func(t *testing.T, err error) {
				var e *Error
				if !errors.As(err, &e) || e.Cause == nil || !strings.Contains(e.Cause.Error(), "panicked") || !strings.Contains(e.Cause.Error(), "unit exploded") {
					t.Errorf("panicking unit got %v, want an error whose cause names the panic", err)
				} else if strings.Contains(e.Message, "unit exploded") {
					t.Errorf("the panic reached the client-facing message %q", e.Message)
				}
				if code := ErrorCode(err); code != CodeInternal {
					t.Errorf("panicking unit's code = %s, want %s", code, CodeInternal)
				}
			},
		},
	}
	const good = 8
	for _, k := range kinds {
		for _, pos := range []int{0, good / 2, good} {
			t.Run(fmt.Sprintf("%s/at_%d", k.name, pos), func(t *testing.T) {
				db := openTestDB(t)
				createTestBucket(t, db)

				runs := make([]atomic.Int32, good+1)
				units := make([]Unit, good+1)
				for i := range units {
					key := fmt.Appendf(nil, "good-%d", i)
					if i == pos {
						key = []byte("bad")
					}
					units[i] = func(tx *Tx) error {
						runs[i].Add(1)
						if err := putUnit(key)(tx); err != nil {
							return err
						}
						if i == pos {
							return k.fail()
						}
						return nil
					}
				}

				release := holdCommitLoop(t, db)
				results := submitInOrder(t, db, units)
				before := db.CommitStats()
				release()

				for i, ch := range results {
					err := testkit.Recv(t, fmt.Sprintf("unit %d's answer", i), ch)
					if i == pos {
						k.check(t, err)
					} else if err != nil {
						t.Errorf("good unit %d got %v, want nil", i, err)
					}
				}
				// One batch for the holding unit, one for all the others, one failure.
				stats := db.CommitStats()
				if got, want := (CommitStats{stats.Batches - before.Batches, stats.Units - before.Units, stats.Failed - before.Failed}), (CommitStats{2, good + 1, 1}); got != want {
					t.Errorf("commit stats moved by %+v, want %+v", got, want)
				}
				keys := testKeys(t, db)
				if keys["bad"] {
					t.Error("the failing unit's write was committed")
				}
				for i := range units {
					if i != pos && !keys[fmt.Sprintf("good-%d", i)] {
						t.Errorf("good unit %d's write is missing", i)
					}
					want := int32(1)
					if i < pos {
						want = 2
					}
					if got := runs[i].Load(); got != want {
						t.Errorf("unit %d ran %d times, want %d (were the units in one batch?)", i, got, want)
					}
				}
			})
		}
	}
}

// eventSink reads the feed as a realtime hub or webhook worker would, through a subscription.
type eventSink struct {
	mu     sync.Mutex
	sub    *Subscription
	events []Event
}

func newEventSink(db *DB) *eventSink {
	s := &eventSink{sub: db.Subscribe("test")}
	return s
}

// snapshot returns every event read so far, after reading whatever is in the feed right now
// without waiting: what a commit published before its Update returned is there.
func (s *eventSink) snapshot() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	now, cancel := context.WithCancel(context.Background())
	cancel()
	for {
		evs, err := s.sub.Next(now, 1000)
		if err != nil {
			break
		}
		s.events = append(s.events, evs...)
	}
	return append([]Event(nil), s.events...)
}

// countUnit counts the published events that a unit labelled label appended.
func (s *eventSink) countUnit(tb testing.TB, label string) int {
	n := 0
	for _, ev := range s.snapshot() {
		if decodeData[testEventData](tb, ev).Unit == label {
			n++
		}
	}
	return n
}

type testEventData struct {
	Unit string `json:"unit"`
	I    int    `json:"i"`
}

// eventUnit appends two events labelled label and then returns fail.
func eventUnit(orgID, label string, fail error) Unit {
	return func(tx *Tx) error {
		for i := range 2 {
			if err := tx.appendEvent(orgID, "", "test.event", testEventData{Unit: label, I: i}); err != nil {
				return err
			}
		}
		return fail
	}
}

// (d) Subscribers see every committed event once, in offset order, before the unit's Update
// returns; the events of a failed unit (whose offsets were handed out in a rolled-back run) are
// never published and leave no gap. The first phase puts failing units inside one known batch,
// the second lets 32 writers race through many batches.
func TestSubscribePublishesCommittedEventsInOrder(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	sink := newEventSink(db)
	errBad := errors.New("refused after appending events")
	var goodUnits atomic.Int32

	// Phase 1: one batch of 20 units, every fourth failing after appending its events.
	release := holdCommitLoop(t, db)
	var units []Unit
	var labels []string
	for i := range 20 {
		label := fmt.Sprintf("batch-%d", i)
		var fail error
		if i%4 == 1 {
			label, fail = "bad-"+label, errBad
		}
		labels = append(labels, label)
		units = append(units, eventUnit(org.OrgID, label, fail))
	}
	results := submitInOrder(t, db, units)
	release()
	for i, ch := range results {
		err := testkit.Recv(t, "a batch unit's answer", ch)
		bad := strings.HasPrefix(labels[i], "bad-")
		switch {
		case bad && !errors.Is(err, errBad):
			t.Errorf("unit %s got %v, want its own error", labels[i], err)
		case !bad && err != nil:
			t.Errorf("unit %s got %v", labels[i], err)
		case !bad:
			goodUnits.Add(1)
			// Update has returned, so its events must already have been handed to subscribers.
			if n := sink.countUnit(t, labels[i]); n != 2 {
				t.Errorf("unit %s: %d of its events published when Update returned, want 2", labels[i], n)
			}
		}
	}

	// Phase 2: free-running writers, every third unit failing.
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			<-gate
			for u := range 6 {
				label := fmt.Sprintf("w%d-u%d", w, u)
				var fail error
				if u%3 == 2 {
					label, fail = "bad-"+label, errBad
				}
				err := db.Update(context.Background(), eventUnit(org.OrgID, label, fail))
				if fail != nil {
					if !errors.Is(err, errBad) {
						t.Errorf("unit %s got %v, want its own error", label, err)
					}
					continue
				}
				if err != nil {
					t.Errorf("unit %s: %v", label, err)
					continue
				}
				goodUnits.Add(1)
				if n := sink.countUnit(t, label); n != 2 {
					t.Errorf("unit %s: %d of its events published when Update returned, want 2", label, n)
				}
			}
		})
	}
	close(gate)
	testkit.WaitAll(t, "all writers", &wg)

	published := sink.snapshot()
	want := 2 * int(goodUnits.Load())
	if len(published) != want {
		t.Fatalf("%d events published, want %d (2 per successful unit)", len(published), want)
	}
	perUnit := map[string]int{}
	for i, ev := range published {
		if ev.Offset != uint64(i+1) {
			t.Fatalf("published event %d has offset %d, want %d: out of order, duplicated or with a gap", i, ev.Offset, i+1)
		}
		label := decodeData[testEventData](t, ev).Unit
		if strings.HasPrefix(label, "bad-") {
			t.Errorf("event %d of failed unit %s was published", ev.Offset, label)
		}
		perUnit[label]++
	}
	for label, n := range perUnit {
		if n != 2 {
			t.Errorf("unit %s: %d events published, want exactly 2", label, n)
		}
	}
	// The log on disk is the same sequence: what live consumers saw is what a replay gives.
	logged := eventsAfter(t, db, org.OrgID, 0)
	if len(logged) != len(published) {
		t.Fatalf("log holds %d events, %d were published", len(logged), len(published))
	}
	for i := range logged {
		if logged[i].ID != published[i].ID || logged[i].Offset != published[i].Offset {
			t.Fatalf("log event %d is %s@%d, published %s@%d", i, logged[i].ID, logged[i].Offset, published[i].ID, published[i].Offset)
		}
	}
}

// (e) A closed database refuses new units with unavailable (the contract's 503 while shutting
// down) and never runs them.
func TestUpdateAfterCloseIsUnavailable(t *testing.T) {
	db := openTestDB(t)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	ran := false
	err := db.Update(context.Background(), func(*Tx) error { ran = true; return nil })
	wantCode(t, err, CodeUnavailable)
	if ran {
		t.Error("a unit ran after Close")
	}
	_, err = db.CreateOrg(context.Background(), NewOrg{Name: "late"})
	wantCode(t, err, CodeUnavailable)
}

// (e) Close drains: every unit queued before it is run, committed and answered before Close
// returns, while units submitted once Close has begun are refused at once instead of waiting.
func TestCloseAnswersQueuedUnits(t *testing.T) {
	const queued = 16
	dir := t.TempDir()
	db := openDBAt(t, dir)
	createTestBucket(t, db)

	var ran atomic.Int32
	units := make([]Unit, queued)
	for i := range units {
		key := fmt.Appendf(nil, "queued-%02d", i)
		units[i] = func(tx *Tx) error {
			ran.Add(1)
			return putUnit(key)(tx)
		}
	}
	release := holdCommitLoop(t, db)
	results := submitInOrder(t, db, units)

	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	testkit.WaitFor(t, "Close to stop taking units", func() bool {
		db.commits.mu.Lock()
		defer db.commits.mu.Unlock()
		return db.commits.closed
	})
	// The loop is still held, so an Update that waited here would hang: it must be refused.
	late := make(chan error, 1)
	go func() { late <- db.Update(context.Background(), putUnit([]byte("late"))) }()
	wantCode(t, testkit.Recv(t, "the late unit's answer", late), CodeUnavailable)
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while units were still queued", err)
	default:
	}

	release()
	if err := testkit.Recv(t, "Close to return", closed); err != nil {
		t.Fatalf("close: %v", err)
	}
	if n := ran.Load(); n != queued {
		t.Errorf("%d of %d queued units had run when Close returned", n, queued)
	}
	for i, ch := range results {
		if err := testkit.Recv(t, "a queued unit's answer", ch); err != nil {
			t.Errorf("queued unit %d: %v", i, err)
		}
	}

	// What Close answered as committed is on disk.
	db2 := openDBAt(t, dir)
	keys := testKeys(t, db2)
	for i := range queued {
		if k := fmt.Sprintf("queued-%02d", i); !keys[k] {
			t.Errorf("%s missing after reopening", k)
		}
	}
	if keys["late"] {
		t.Error("the unit refused during Close was written")
	}
}
