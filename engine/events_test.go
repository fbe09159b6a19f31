package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/awardee/awardee/internal/testkit"
)

// appendTestEvents appends n events to orgID's log in one unit and returns the creation time of
// the last one. Going through appendEvent rather than posting messages keeps logs of a thousand
// events cheap to build.
func appendTestEvents(tb testing.TB, db *DB, orgID string, n int) Time {
	tb.Helper()
	var last Time
	err := db.Update(context.Background(), func(tx *Tx) error {
		for i := range n {
			if err := tx.appendEvent(orgID, "", "test.event", testEventData{Unit: "bulk", I: i}); err != nil {
				return err
			}
		}
		last = tx.events[len(tx.events)-1].CreatedAt
		return nil
	})
	if err != nil {
		tb.Fatalf("append events: %v", err)
	}
	return last
}

func wantBounds(tb testing.TB, db *DB, orgID string, oldest, latest uint64) {
	tb.Helper()
	o, l, err := db.LogBounds(orgID)
	if err != nil {
		tb.Fatal(err)
	}
	if o != oldest || l != latest {
		tb.Fatalf("log bounds = (%d, %d), want (%d, %d)", o, l, oldest, latest)
	}
}

// Offsets are 1, 2, 3… per org, in commit order, with no gap or duplicate under concurrent
// writers, and one org's traffic never moves another org's counter.
func TestEventOffsetsPerOrg(t *testing.T) {
	const writers, posts = 16, 4
	db := openTestDB(t)
	a, b := newTestOrg(t, db), newTestOrg(t, db)
	convA, convB := newConv(t, db, a.OrgID, StatusOpen), newConv(t, db, b.OrgID, StatusOpen)

	for i := range 5 {
		postAgent(t, db, a.OrgID, convA.ID, fmt.Sprintf("a%d", i))
	}
	postAgent(t, db, b.OrgID, convB.ID, "b0")
	if evs := eventsAfter(t, db, b.OrgID, 0); len(evs) != 1 || evs[0].Offset != 1 {
		t.Fatalf("org b's first event: %+v, want offset 1 whatever org a wrote before", evs)
	}

	gate := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		for _, o := range []struct {
			org  CreatedOrg
			conv Conversation
		}{{a, convA}, {b, convB}} {
			wg.Go(func() {
				<-gate
				for p := range posts {
					if _, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: o.org.OrgID, ConversationID: o.conv.ID, Author: AuthorAgent, Text: fmt.Sprintf("w%d p%d", w, p)}, nil); err != nil {
						t.Errorf("post: %v", err)
					}
				}
			})
		}
	}
	close(gate)
	testkit.WaitAll(t, "all writers", &wg)

	for _, o := range []struct {
		name   string
		orgID  string
		convID string
		want   int
	}{
		{"a", a.OrgID, convA.ID, 5 + writers*posts},
		{"b", b.OrgID, convB.ID, 1 + writers*posts},
	} {
		evs := eventsAfter(t, db, o.orgID, 0)
		if len(evs) != o.want {
			t.Errorf("org %s: %d events, want %d", o.name, len(evs), o.want)
		}
		for i, ev := range evs {
			if ev.Offset != uint64(i+1) {
				t.Fatalf("org %s: event %d has offset %d, want %d", o.name, i, ev.Offset, i+1)
			}
			if ev.OrgID != o.orgID || ev.ConversationID != o.convID {
				t.Fatalf("org %s: event %d belongs to %s/%s", o.name, ev.Offset, ev.OrgID, ev.ConversationID)
			}
		}
		wantBounds(t, db, o.orgID, 1, uint64(o.want))
	}
}

// ListEvents pages oldest first; more is true only when an event follows the page. An org that
// never wrote has an empty log, not an error.
func TestListEventsPaging(t *testing.T) {
	const total = 7
	db := openTestDB(t)
	org := newTestOrg(t, db)
	other := newTestOrg(t, db)
	appendTestEvents(t, db, org.OrgID, total)
	appendTestEvents(t, db, other.OrgID, 2) // must never show in org's pages

	cases := []struct {
		name     string
		orgID    string
		after    uint64
		limit    int
		want     []uint64
		wantMore bool
	}{
		{"first page", org.OrgID, 0, 3, []uint64{1, 2, 3}, true},
		{"middle page", org.OrgID, 3, 3, []uint64{4, 5, 6}, true},
		{"short last page", org.OrgID, 6, 3, []uint64{7}, false},
		{"rest fits the limit exactly", org.OrgID, 4, 3, []uint64{5, 6, 7}, false},
		{"all at once", org.OrgID, 0, 100, []uint64{1, 2, 3, 4, 5, 6, 7}, false},
		{"after the latest", org.OrgID, 7, 3, nil, false},
		{"far after the latest", org.OrgID, 1000, 3, nil, false},
		{"org without a log", newID(PrefixOrg), 0, 3, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			page, more, err := db.ListEvents(c.orgID, c.after, c.limit)
			if err != nil {
				t.Fatal(err)
			}
			var offsets []uint64
			for _, ev := range page {
				offsets = append(offsets, ev.Offset)
				if ev.OrgID != c.orgID {
					t.Errorf("event %d of org %s listed for %s", ev.Offset, ev.OrgID, c.orgID)
				}
			}
			if fmt.Sprint(offsets) != fmt.Sprint(c.want) || more != c.wantMore {
				t.Errorf("page = %v more=%v, want %v more=%v", offsets, more, c.want, c.wantMore)
			}
			if page == nil {
				t.Error("an empty page is nil; it must encode as [] not null")
			}
		})
	}
}

// Pruning removes events older than the cutoff from every org's log, in several chunks when the
// log is long, and never gives a pruned offset out again: the log's latest offset stays and the
// next event continues after it, so a consumer can tell it missed events (resync_required).
func TestPruneEvents(t *testing.T) {
	const bulk = 2*pruneChunk + 200 // enough to need three pruning units
	cases := []struct {
		name       string
		cutoff     func(clock *testClock) time.Time
		split      bool // a second batch is appended after the cutoff
		wantPruned int
		wantOldest uint64
	}{
		{"future cutoff removes all", func(c *testClock) time.Time { return c.Now().Add(time.Hour) }, false, bulk + 3, 0},
		{"past cutoff removes none", func(c *testClock) time.Time { return c.Now().Add(-time.Hour) }, false, 0, 1},
		{"cutoff between two batches", func(c *testClock) time.Time { c.Advance(time.Millisecond); return c.Now().Truncate(time.Millisecond) }, true, bulk + 3, bulk + 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db, clock := openClockedDB(t)
			org := newTestOrg(t, db)
			other := newTestOrg(t, db)
			appendTestEvents(t, db, org.OrgID, bulk)
			appendTestEvents(t, db, other.OrgID, 3)
			cutoff := c.cutoff(clock)
			latest := uint64(bulk)
			if c.split {
				appendTestEvents(t, db, org.OrgID, 5)
				latest += 5
			}

			n, err := db.PruneEvents(context.Background(), cutoff)
			if err != nil {
				t.Fatal(err)
			}
			if n != c.wantPruned {
				t.Errorf("pruned %d events, want %d", n, c.wantPruned)
			}
			wantBounds(t, db, org.OrgID, c.wantOldest, latest)
			kept := eventsAfter(t, db, org.OrgID, 0)
			wantKept := 0
			if c.wantOldest != 0 {
				wantKept = int(latest - c.wantOldest + 1)
			}
			if len(kept) != wantKept {
				t.Errorf("%d events kept, want %d", len(kept), wantKept)
			}
			for _, ev := range kept {
				if ev.CreatedAt.Before(cutoff) {
					t.Errorf("event %d from %v survived a cutoff of %v", ev.Offset, ev.CreatedAt, cutoff)
				}
			}

			// The next event continues after the latest offset ever given, pruned or not.
			appendTestEvents(t, db, org.OrgID, 1)
			evs := eventsAfter(t, db, org.OrgID, latest)
			if len(evs) != 1 || evs[0].Offset != latest+1 {
				t.Errorf("next event after pruning: %+v, want offset %d", evs, latest+1)
			}
			oldest := c.wantOldest
			if oldest == 0 {
				oldest = latest + 1
			}
			wantBounds(t, db, org.OrgID, oldest, latest+1)
		})
	}
}

// putIdemAt stores idempotency records created at the given times, the only way to have old ones
// without waiting for a TTL to pass.
func putIdemAt(tb testing.TB, db *DB, orgID string, records map[string]time.Time) {
	tb.Helper()
	err := db.Update(context.Background(), func(tx *Tx) error {
		for key, at := range records {
			// Backdate the unit's clock so the record and its time-index entry carry at.
			tx.now = Time{at.UTC().Truncate(time.Millisecond)}
			if err := tx.putIdempotency(orgID, &Idempotency{Key: key, Status: 201}, 201, []byte(`{}`)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("store idempotency records: %v", err)
	}
}

// idemExists reports whether a record is stored under the key at all, whatever its age.
func idemExists(tb testing.TB, db *DB, orgID, key string) bool {
	tb.Helper()
	rec, err := db.LookupIdempotency(orgID, key, 1<<62)
	if err != nil {
		tb.Fatal(err)
	}
	return rec != nil
}

// PruneIdempotency removes exactly the records older than the TTL, in every org, including in a
// store large enough that it takes several delete units.
func TestPruneIdempotency(t *testing.T) {
	const ttl = time.Hour
	db := openTestDB(t)
	a, b := newTestOrg(t, db), newTestOrg(t, db)
	now := time.Now()
	want := map[string]bool{} // org/key → kept
	for _, org := range []string{a.OrgID, b.OrgID} {
		records := map[string]time.Time{
			"old-2h":    now.Add(-2 * time.Hour),
			"old-25h":   now.Add(-25 * time.Hour),
			"fresh-59m": now.Add(-59 * time.Minute),
			"fresh-1m":  now.Add(-time.Minute),
		}
		// Over pruneChunk*4 records, interleaved by key, so expired ones sit in every scan window.
		for i := range 2200 {
			age := time.Duration(i%2) * 3 * time.Hour
			records[fmt.Sprintf("bulk-%05d", i)] = now.Add(-age)
		}
		putIdemAt(t, db, org, records)
		for k, at := range records {
			want[org+"/"+k] = now.Sub(at) < ttl
		}
	}
	expired := 0
	for _, kept := range want {
		if !kept {
			expired++
		}
	}

	n, err := db.PruneIdempotency(context.Background(), ttl)
	if err != nil {
		t.Fatal(err)
	}
	if n != expired {
		t.Errorf("pruned %d records, want %d", n, expired)
	}
	for _, org := range []string{a.OrgID, b.OrgID} {
		for _, k := range []string{"old-2h", "old-25h", "fresh-59m", "fresh-1m", "bulk-00000", "bulk-00001", "bulk-02199"} {
			if got := idemExists(t, db, org, k); got != want[org+"/"+k] {
				t.Errorf("%s: stored=%v after pruning, want %v", k, got, want[org+"/"+k])
			}
		}
	}
	if n, err := db.PruneIdempotency(context.Background(), ttl); err != nil || n != 0 {
		t.Errorf("second prune removed %d (%v), want 0", n, err)
	}
}

// A key found expired by the pruner's look but rewritten by a retry before the delete commits
// must survive: the delete unit works from the time index as its own transaction sees it. The commit loop is held so that the scan
// happens before the rewrite and the delete after it.
func TestPruneIdempotencyKeepsRewrittenKey(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	putIdemAt(t, db, org.OrgID, map[string]time.Time{"retried": time.Now().Add(-2 * time.Hour)})
	fresh := &Idempotency{Key: "retried", Fingerprint: [32]byte{7}, Status: 201}

	entered, unblock := make(chan struct{}), make(chan struct{})
	rewritten := make(chan error, 1)
	var once, unblockOnce sync.Once
	release := func() { unblockOnce.Do(func() { close(unblock) }) }
	t.Cleanup(release) // let go of the loop even if the test fails, so Close does not hang
	go func() {
		rewritten <- db.Update(context.Background(), func(tx *Tx) error {
			once.Do(func() { close(entered) })
			<-unblock
			return tx.putIdempotency(org.OrgID, fresh, 201, []byte(`{"again":true}`))
		})
	}()
	testkit.Recv(t, "the rewriting unit to start", entered)

	type result struct {
		n   int
		err error
	}
	pruned := make(chan result, 1)
	go func() {
		n, err := db.PruneIdempotency(context.Background(), time.Hour)
		pruned <- result{n, err}
	}()
	// The pruner's delete unit in the queue means its scan saw the old record.
	testkit.WaitFor(t, "the pruner's delete unit", func() bool { return db.Queued() == 1 })
	release()
	if err := testkit.Recv(t, "the rewrite", rewritten); err != nil {
		t.Fatal(err)
	}
	res := testkit.Recv(t, "the pruner", pruned)
	if res.err != nil || res.n != 0 {
		t.Errorf("pruner removed %d (%v), want 0: the record was rewritten before its delete", res.n, res.err)
	}
	rec, err := db.LookupIdempotency(org.OrgID, "retried", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if rec == nil || !rec.Matches(fresh.Fingerprint) {
		t.Errorf("the rewritten record is gone or stale: %+v", rec)
	}
}

// LookupIdempotency treats a record older than the TTL as absent (the key runs afresh), and keys
// are scoped to their org.
func TestLookupIdempotency(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	other := newTestOrg(t, db)
	now := time.Now()
	putIdemAt(t, db, org.OrgID, map[string]time.Time{"old": now.Add(-2 * time.Hour), "recent": now.Add(-30 * time.Minute)})
	idem := &Idempotency{Key: "saved", Fingerprint: [32]byte{1, 2, 3}, Status: 400}
	if err := db.SaveOutcome(context.Background(), org.OrgID, idem, 400, []byte(`{"error":{}}`)); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name  string
		orgID string
		key   string
		ttl   time.Duration
		found bool
	}{
		{"expired", org.OrgID, "old", time.Hour, false},
		{"expired under a longer ttl is live", org.OrgID, "old", 3 * time.Hour, true},
		{"within ttl", org.OrgID, "recent", time.Hour, true},
		{"just saved", org.OrgID, "saved", 24 * time.Hour, true},
		{"missing", org.OrgID, "never", 24 * time.Hour, false},
		{"other org's key", other.OrgID, "saved", 24 * time.Hour, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec, err := db.LookupIdempotency(c.orgID, c.key, c.ttl)
			if err != nil {
				t.Fatal(err)
			}
			if (rec != nil) != c.found {
				t.Errorf("found=%v, want %v", rec != nil, c.found)
			}
		})
	}
	rec, err := db.LookupIdempotency(org.OrgID, "saved", time.Hour)
	if err != nil || rec == nil {
		t.Fatalf("saved record: %v %v", rec, err)
	}
	if !rec.Matches(idem.Fingerprint) || rec.Matches([32]byte{9}) || rec.Status != 400 || string(rec.Body) != `{"error":{}}` {
		t.Errorf("saved record = %+v, want status 400, its body, and only its fingerprint to match", rec)
	}
}

// RunMaintenance sweeps at once and then on its ticker, and returns promptly once its owner
// cancels the context, whether that happens before it starts, while it waits for the next tick,
// or while it ticks fast. A cancelled sweep is not reported as a failure.
func TestRunMaintenanceStopsOnCancel(t *testing.T) {
	cases := []struct {
		name      string
		every     time.Duration
		preCancel bool
	}{
		{"waiting for the next tick", time.Hour, false},
		{"ticking fast", time.Millisecond, false},
		{"cancelled before it starts", time.Hour, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db, clock := openClockedDB(t)
			org := newTestOrg(t, db)
			last := appendTestEvents(t, db, org.OrgID, 3)
			putIdemAt(t, db, org.OrgID, map[string]time.Time{"k": last.Time})
			clock.Advance(time.Millisecond) // so a zero retention puts every record before the cutoff

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if c.preCancel {
				cancel()
			}
			var failures atomic.Int32
			done := make(chan struct{})
			go func() {
				defer close(done)
				db.RunMaintenance(ctx, Maintenance{Every: c.every, OnError: func(what string, err error) {
					failures.Add(1)
					t.Errorf("sweep of %s failed: %v", what, err)
				}})
			}()
			if !c.preCancel {
				// The first sweep runs at once: both the events and the key go.
				testkit.WaitFor(t, "the first sweep", func() bool {
					oldest, _, err := db.LogBounds(org.OrgID)
					return err == nil && oldest == 0 && !idemExists(t, db, org.OrgID, "k")
				})
				cancel()
			}
			testkit.Recv(t, "RunMaintenance to return after cancel", done)
			wantOldest := uint64(0) // pruned by the first sweep
			if c.preCancel {
				wantOldest = 1 // a sweep that starts cancelled deletes nothing
			}
			wantBounds(t, db, org.OrgID, wantOldest, 3)
			if failures.Load() != 0 {
				t.Errorf("%d sweep failures reported", failures.Load())
			}
		})
	}
}
