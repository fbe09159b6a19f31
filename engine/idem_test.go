package engine

import (
	"context"
	"strings"
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

// The record of a 2xx is committed by the same transaction as the message: when the message's
// events are published (after that transaction's fsync, before any later one), the record is
// already readable. A record written in a transaction of its own would not be.
func TestIdempotencyRecordCommitsWithTheMessage(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv, err := db.CreateConversation(context.Background(), org.OrgID, NewConversation{Status: StatusOpen}, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := make(chan bool, 1)
	db.Subscribe(func(events []Event) {
		rec, err := db.LookupIdempotency(org.OrgID, "same-tx", time.Hour)
		found <- err == nil && rec != nil
	})
	idem := &Idempotency{Key: "same-tx", Status: 201}
	msg, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.Conversation.ID, Author: AuthorAgent, Text: "hi"}, idem)
	if err != nil {
		t.Fatal(err)
	}
	if !<-found {
		t.Fatal("the message's events were published before its idempotency record was readable")
	}
	rec, err := db.LookupIdempotency(org.OrgID, "same-tx", time.Hour)
	if err != nil || rec == nil || !strings.Contains(string(rec.Body), msg.ID) || string(rec.Body) != string(idem.Stored) {
		t.Fatalf("stored record %+v (%v) does not hold the message %s", rec, err, msg.ID)
	}
}
