package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/awardee/awardee/internal/testkit"
)

// nextEvents reads n events from sub, failing the test at the deadline.
func nextEvents(tb testing.TB, sub *Subscription, n int) []Event {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout)
	defer cancel()
	var out []Event
	for len(out) < n {
		evs, err := sub.Next(ctx, n-len(out))
		if err != nil {
			tb.Fatalf("after %d of %d events: %v", len(out), n, err)
		}
		out = append(out, evs...)
	}
	return out
}

// A subscription sees every event committed after Subscribe returned, once and in offset order,
// while writers race; what it read equals the durable log.
func TestSubscriptionReadsEveryCommittedEventOnce(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	start := latestOffset(t, db, org.OrgID)
	sub := db.Subscribe("test")
	defer sub.Close()

	const writers, perWriter = 8, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				if _, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, Text: fmt.Sprintf("w%d-%d", w, i)}, nil); err != nil {
					t.Errorf("post: %v", err)
				}
			}
		})
	}
	read := nextEvents(t, sub, writers*perWriter)
	testkit.WaitAll(t, "writers", &wg)
	logged := eventsAfter(t, db, org.OrgID, start)
	if len(logged) != len(read) {
		t.Fatalf("read %d events, the log holds %d", len(read), len(logged))
	}
	for i := range read {
		if read[i].ID != logged[i].ID || read[i].Offset != start+uint64(i)+1 {
			t.Fatalf("event %d read as %s@%d, logged %s@%d", i, read[i].ID, read[i].Offset, logged[i].ID, logged[i].Offset)
		}
	}
	if stats := db.FeedStats(); len(stats) != 1 || stats[0] != (FeedStats{Name: "test"}) {
		t.Errorf("feed stats = %+v, want one caught-up subscriber", stats)
	}
}

// A consumer that never reads can neither slow nor stop the writes: they commit past the ring's
// capacity, its lag is counted, it is told it fell behind, then it continues at the head; and
// Close does not wait for it.
func TestStalledSubscriberNeverBlocksWrites(t *testing.T) {
	dir := t.TempDir()
	db := openDBAt(t, dir)
	org := newTestOrg(t, db)
	stalled := db.Subscribe("stalled")
	appendTestEvents(t, db, org.OrgID, feedCapacity+10)

	stats := db.FeedStats()
	if len(stats) != 1 || stats[0].Lag != feedCapacity+10 || stats[0].Dropped != 0 {
		t.Fatalf("feed stats = %+v, want lag %d and no drop yet", stats, feedCapacity+10)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout)
	defer cancel()
	if _, err := stalled.Next(ctx, 10); !errors.Is(err, ErrFellBehind) {
		t.Fatalf("Next after falling behind = %v, want ErrFellBehind", err)
	}
	if stats := db.FeedStats(); stats[0].Lag != 0 || stats[0].Dropped != 1 {
		t.Fatalf("feed stats after the drop = %+v, want lag 0 and one drop", stats)
	}
	appendTestEvents(t, db, org.OrgID, 1)
	if evs := nextEvents(t, stalled, 1); evs[0].Offset != feedCapacity+11 {
		t.Fatalf("after catching up it read offset %d, want %d", evs[0].Offset, feedCapacity+11)
	}
	stalled.Close()
	if stats := db.FeedStats(); len(stats) != 1 || stats[0].Lag != 0 || stats[0].Dropped != 1 {
		t.Fatalf("a closed subscription's drops must stay counted: %+v", stats)
	}
	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	if err := testkit.Recv(t, "Close with a subscriber that never read", closed); err != nil {
		t.Fatal(err)
	}
}

// The ring bounds the memory it pins by bytes as well as by count: large events push old ones
// out long before the count would.
func TestFeedRingIsBoundedByBytes(t *testing.T) {
	f := newFeed()
	big := make([]byte, 1<<20)
	for i := range 100 {
		f.publish([]Event{{Offset: uint64(i + 1), Data: big}})
	}
	if f.bytes > feedMaxBytes {
		t.Fatalf("the ring holds %d bytes, over its bound of %d", f.bytes, feedMaxBytes)
	}
	if held := int(f.head - f.tail); held != feedMaxBytes/len(big) {
		t.Fatalf("the ring holds %d events of 1 MiB, want %d", held, feedMaxBytes/len(big))
	}
}

// Notify's channel is closed by the next commit that appends events, so a consumer that took it
// before reading the log cannot miss a commit; Next returns when its context ends.
func TestNotifyAndNextWakeUps(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	wake := db.Notify()
	select {
	case <-wake:
		t.Fatal("Notify's channel was closed before any commit")
	default:
	}
	appendTestEvents(t, db, org.OrgID, 1)
	testkit.Recv(t, "Notify's channel to close after a commit", wake)

	sub := db.Subscribe("idle")
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := sub.Next(ctx, 1)
		done <- err
	}()
	cancel()
	if err := testkit.Recv(t, "Next to return on cancel", done); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %v, want context.Canceled", err)
	}
}

// Fair batching: an org with one unit queued behind another org's backlog is served in the very
// next batch, second after the backlog's first unit, not after the whole backlog.
func TestCommitServesEveryOrgInTurn(t *testing.T) {
	db, err := Open(t.TempDir(), Options{MaxBatch: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var order []string
	var mu sync.Mutex
	unit := func(label string) Unit {
		return func(*Tx) error {
			mu.Lock()
			order = append(order, label)
			mu.Unlock()
			return nil
		}
	}
	release := holdCommitLoop(t, db)
	var calls []func() error
	for i := range 40 {
		calls = append(calls, func() error { return db.update(context.Background(), "org_flood", unit(fmt.Sprint("flood-", i))) })
	}
	calls = append(calls, func() error { return db.update(context.Background(), "org_quiet", unit("quiet")) })
	results := submitCalls(t, db, calls)
	release()
	for _, ch := range results {
		if err := testkit.Recv(t, "an answer", ch); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 41 || order[0] != "flood-0" || order[1] != "quiet" {
		t.Fatalf("units ran in the order %v, want the quiet org's unit second", order[:min(len(order), 4)])
	}
	for i, label := range order[2:] {
		if want := fmt.Sprint("flood-", i+1); label != want {
			t.Fatalf("unit %d is %s, want %s: one org's units must keep their order", i+2, label, want)
		}
	}
}

// An org's queue is bounded: past MaxBatch queued units its next caller waits for a slot, and a
// caller whose context ends while waiting is answered with that and never runs.
func TestOrgQueueIsBounded(t *testing.T) {
	db, err := Open(t.TempDir(), Options{MaxBatch: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	release := holdCommitLoop(t, db)
	var calls []func() error
	for range 4 {
		calls = append(calls, func() error { return db.update(context.Background(), "org_a", func(*Tx) error { return nil }) })
	}
	results := submitCalls(t, db, calls)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var ran atomic.Bool
	err = db.update(ctx, "org_a", func(*Tx) error { ran.Store(true); return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the fifth queued unit got %v, want to wait for a slot until its context ended", err)
	}
	// Another org is not held up by org_a's full queue: its unit queues at once.
	other := make(chan error, 1)
	go func() { other <- db.update(context.Background(), "org_b", func(*Tx) error { return nil }) }()
	testkit.WaitFor(t, "org_b's unit to queue beside org_a's full queue", func() bool { return db.Queued() == 5 })
	release()
	for _, ch := range results {
		if err := testkit.Recv(t, "an answer", ch); err != nil {
			t.Fatal(err)
		}
	}
	if err := testkit.Recv(t, "org_b's answer", other); err != nil {
		t.Fatal(err)
	}
	if ran.Load() {
		t.Fatal("a unit whose caller gave up waiting for a slot ran")
	}
}

// A panic inside bbolt's commit is the batch's error, not the process's end, and the database
// stays usable.
func TestCommitPanicIsAnError(t *testing.T) {
	db := openTestDB(t)
	err := db.commit(func(*bolt.Tx) error { panic("damaged page") })
	if err == nil {
		t.Fatal("a panicking commit returned nil")
	}
	org := newTestOrg(t, db)
	if _, err := db.Org(org.OrgID); err != nil {
		t.Fatalf("after the panic: %v", err)
	}
}

// Plug-in buckets: declared ones commit and roll back with their unit; undeclared ones and names
// of the engine's own buckets are refused.
func TestPluginBuckets(t *testing.T) {
	if _, err := Open(t.TempDir(), Options{Buckets: []string{"msgs"}}); err == nil {
		t.Fatal("a plug-in bucket named like an engine bucket was accepted")
	}
	db, err := Open(t.TempDir(), Options{Buckets: []string{"plugin"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	put := func(key string, fail error) error {
		return db.Update(context.Background(), func(tx *Tx) error {
			b, err := tx.Bucket("plugin")
			if err != nil {
				return err
			}
			if err := b.Put([]byte(key), []byte("v")); err != nil {
				return err
			}
			return fail
		})
	}
	if err := put("kept", nil); err != nil {
		t.Fatal(err)
	}
	if err := put("rolled-back", errors.New("refused")); err == nil {
		t.Fatal("the failing unit succeeded")
	}
	var keys []string
	err = db.ViewBucket("plugin", func(b Bucket) error {
		return b.Scan(nil, func(k, _ []byte) (bool, error) {
			keys = append(keys, string(k))
			return true, nil
		})
	})
	if err != nil || len(keys) != 1 || keys[0] != "kept" {
		t.Fatalf("plug-in bucket holds %v (%v), want only the committed key", keys, err)
	}
	err = db.Update(context.Background(), func(tx *Tx) error {
		_, err := tx.Bucket("undeclared")
		return err
	})
	if err == nil {
		t.Fatal("an undeclared bucket was handed out")
	}
	if err := db.ViewBucket("msgs", func(Bucket) error { return nil }); err == nil {
		t.Fatal("an engine bucket was handed to a plug-in")
	}
}

// A resume position beyond the latest offset is refused; one whose following events were pruned
// asks for a resync; any other replays exactly.
func TestResumeFrom(t *testing.T) {
	db, clock := openClockedDB(t)
	org := newTestOrg(t, db)
	appendTestEvents(t, db, org.OrgID, 5)
	for _, after := range []uint64{0, 3, 5} {
		if resync, err := db.ResumeFrom(org.OrgID, after); err != nil || resync {
			t.Errorf("resume after %d = %v, %v; want a plain replay", after, resync, err)
		}
	}
	_, err := db.ResumeFrom(org.OrgID, 6)
	wantCode(t, err, CodeValidation)

	clock.Advance(time.Millisecond)
	if _, err := db.PruneEvents(context.Background(), clock.Now().Truncate(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	appendTestEvents(t, db, org.OrgID, 1)
	if resync, err := db.ResumeFrom(org.OrgID, 4); err != nil || !resync {
		t.Errorf("resume after 4 with 5 pruned = %v, %v; want resync", resync, err)
	}
	if resync, err := db.ResumeFrom(org.OrgID, 5); err != nil || resync {
		t.Errorf("resume after 5 with offset 6 kept = %v, %v; want a plain replay", resync, err)
	}
}
