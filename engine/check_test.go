package engine

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestCheckReportsEachBrokenInvariant breaks one promise of the key layouts at a time, in a copy
// of a sound database, and expects Check to name it. The sound copy must pass, so a check that
// reports everything would fail here too.
func TestCheckReportsEachBrokenInvariant(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	for _, text := range []string{"one", "two", "three"} {
		postAgent(t, db, org.OrgID, conv.ID, text)
	}
	idem := &Idempotency{Key: "k1", Fingerprint: [32]byte{1}, Status: 201}
	if _, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, APIKeyID: "key_test", Text: "keyed"}, idem); err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, APIKeyID: "key_test", Attachments: []Attachment{testAttachment(1, 1000)}}, nil); err != nil {
		t.Fatal(err)
	}
	if problems := db.Check(); len(problems) > 0 {
		t.Fatalf("a sound database, checked while open: %v", problems)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	sound, err := os.ReadFile(filepath.Join(dir, DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := CheckDir(dir, time.Second); err != nil || len(problems) > 0 {
		t.Fatalf("a sound database: %v %v", problems, err)
	}

	convKey := []byte(org.OrgID + conv.ID)
	cases := []struct {
		name  string
		brk   func(*bolt.Tx) error
		wants string
	}{
		{"index entry without its conversation", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketConvs).Delete(convKey)
		}, "activity: entry of org " + org.OrgID + " points at a missing conversation " + conv.ID},
		{"conversation without its index entry", func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketActivity).Cursor()
			k, _ := c.Seek(append([]byte(org.OrgID), anyStatus))
			return tx.Bucket(bucketActivity).Delete(k)
		}, "has no index entry for status byte 255"},
		{"index entry under the wrong status", func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketActivity).Cursor()
			k, _ := c.Seek(append([]byte(org.OrgID), byte(StatusOpen.index())))
			moved := append([]byte(nil), k...)
			moved[len(org.OrgID)] = byte(StatusClosed.index())
			if err := tx.Bucket(bucketActivity).Delete(k); err != nil {
				return err
			}
			return tx.Bucket(bucketActivity).Put(moved, nil)
		}, "is indexed under status byte 4 but is open"},
		{"per-status count off", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(countKey(StatusOpen), u64(5))
		}, "meta: count of open is 5 but 1 conversations are open"},
		{"gap in the messages", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMsgs).Delete(join([]byte(conv.ID), u64(2)))
		}, "has message 3 where 2 was due"},
		{"last_seq beyond the messages", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMsgs).Delete(join([]byte(conv.ID), u64(5)))
		}, "has last_seq 5 but its messages end at 4"},
		{"visitor token of a missing conversation", func(tx *bolt.Tx) error {
			ghost := newID(PrefixConversation)
			return putJSON(tx.Bucket(bucketKeys), []byte("some hash"), Principal{KeyID: "key_x", OrgID: org.OrgID, Kind: KeyVisitor, ConversationID: ghost})
		}, "visitor token key_x points at a missing conversation"},
		{"event stored under another offset", func(tx *bolt.Tx) error {
			log := tx.Bucket(bucketEvents).Bucket([]byte(org.OrgID))
			return log.Put(u64(log.Sequence()+1), log.Get(u64(1)))
		}, "holds offset 1"},
		{"usage that is not the library's sum", func(tx *bolt.Tx) error {
			return putJSON(tx.Bucket(bucketMeta), usageKey(org.OrgID), Usage{AssetBytes: 1, AssetCount: 1})
		}, "meta: usage of org " + org.OrgID + " is {AssetBytes:1 AssetCount:1} but its library holds {AssetBytes:1000 AssetCount:1}"},
		{"blob counted for more orgs than hold it", func(tx *bolt.Tx) error {
			k, _ := tx.Bucket(bucketBlobRefs).Cursor().First()
			return tx.Bucket(bucketBlobRefs).Put(k, u64(2))
		}, "counts 2 orgs but 1 libraries hold it"},
		{"idempotency record without its expiry entry", func(tx *bolt.Tx) error {
			k, _ := tx.Bucket(bucketIdemTime).Cursor().First()
			return tx.Bucket(bucketIdemTime).Delete(k)
		}, `idem: record "` + org.OrgID + `k1" has no expiry entry`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, DatabaseFile)
			if err := os.WriteFile(path, sound, 0o600); err != nil {
				t.Fatal(err)
			}
			b, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Update(tc.brk); err != nil {
				t.Fatal(err)
			}
			b.Close()
			problems, err := CheckDir(dir, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				if strings.Contains(p.Error(), tc.wants) {
					return
				}
			}
			t.Fatalf("Check reported %v, want a problem containing %q", problems, tc.wants)
		})
	}
}

// TestCheckRefusesToCreate: checking a directory with no database says so and creates nothing.
func TestCheckRefusesToCreate(t *testing.T) {
	dir := t.TempDir()
	if _, err := CheckDir(dir, time.Second); err == nil || !strings.Contains(err.Error(), "no database") {
		t.Fatalf("CheckDir on an empty directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, DatabaseFile)); !os.IsNotExist(err) {
		t.Fatalf("CheckDir created a database: %v", err)
	}
}
