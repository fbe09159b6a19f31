package engine

import (
	"context"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// An expired record run afresh replaces its time-index entry instead of leaving the old one to
// point at a newer record: the index and the records stay one to one.
func TestIdempotencyTimeIndexFollowsRewrites(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	putIdemAt(t, db, org.OrgID, map[string]time.Time{"k": time.Now().Add(-48 * time.Hour), "other": time.Now()})
	idem := &Idempotency{Key: "k", Status: 201}
	if err := db.SaveOutcome(context.Background(), org.OrgID, idem, 400, []byte(`{"error":{}}`)); err != nil {
		t.Fatal(err)
	}
	if string(idem.Stored) != `{"error":{}}` {
		t.Fatalf("Stored = %q, want the stored body", idem.Stored)
	}
	var records, entries int
	db.bolt.View(func(btx *bolt.Tx) error {
		records = btx.Bucket(bucketIdem).Stats().KeyN
		entries = btx.Bucket(bucketIdemTime).Stats().KeyN
		return nil
	})
	if records != 2 || entries != 2 {
		t.Fatalf("%d records and %d time-index entries, want 2 and 2", records, entries)
	}
	if n, err := db.PruneIdempotency(context.Background(), 24*time.Hour); err != nil || n != 0 {
		t.Fatalf("pruned %d (%v): the rewritten record is fresh", n, err)
	}
}
