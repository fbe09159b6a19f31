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

// The record of a 2xx is committed by the same transaction as the message: a record that cannot
// be written (a key over bbolt's key size limit) takes the message and its events down with it,
// which a record written in a transaction of its own would not.
func TestIdempotencyRecordCommitsWithTheMessage(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv, _, err := db.CreateConversation(context.Background(), org.OrgID, NewConversation{Status: StatusOpen}, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := latestOffset(t, db, org.OrgID)
	unstorable := &Idempotency{Key: strings.Repeat("k", 40_000), Status: 201}
	if _, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.Conversation.ID, Author: AuthorAgent, Text: "hi"}, unstorable); err == nil {
		t.Fatal("a post whose record cannot be stored succeeded")
	}
	if msgs := allMessages(t, db, org.OrgID, conv.Conversation.ID); len(msgs) != 0 {
		t.Fatalf("%d messages stored without their idempotency record", len(msgs))
	}
	if got := latestOffset(t, db, org.OrgID); got != before {
		t.Fatalf("the log moved from %d to %d for a post that failed", before, got)
	}

	idem := &Idempotency{Key: "same-tx", Status: 201}
	msg, answered, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.Conversation.ID, Author: AuthorAgent, Text: "hi"}, idem)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := db.LookupIdempotency(org.OrgID, "same-tx", time.Hour)
	if err != nil || rec == nil || !strings.Contains(string(rec.Body), msg.ID) || string(rec.Body) != string(answered) {
		t.Fatalf("stored record %+v (%v) does not hold the message %s", rec, err, msg.ID)
	}
}
