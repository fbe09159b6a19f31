package engine

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func signedUser(t *testing.T, db *DB, orgID, userID string) *VerifiedUser {
	t.Helper()
	s, err := db.IdentitySecret(context.Background(), orgID)
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, []byte(s.Secret))
	mac.Write([]byte(userID))
	return &VerifiedUser{ID: userID, Hash: hex.EncodeToString(mac.Sum(nil))}
}

// TestCheckFollowsVerifiedUsers: every visitor_users entry must point at a conversation of its
// org whose visitor is that verified user; check names an entry that does not.
func TestCheckFollowsVerifiedUsers(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	user := signedUser(t, db, org.OrgID, "u-1")
	ctx := context.Background()
	verified, _, err := db.CreateConversation(ctx, org.OrgID, NewConversation{User: user}, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := db.CreateConversation(ctx, org.OrgID, NewConversation{User: user}, nil)
	if err != nil || again.Conversation.ID != verified.Conversation.ID || again.VisitorToken == verified.VisitorToken {
		t.Fatalf("second open: %+v, %v", again, err)
	}
	anon := newConv(t, db, org.OrgID, StatusOpen)
	if problems := db.Check(); len(problems) > 0 {
		t.Fatalf("a sound database: %v", problems)
	}
	key := visitorUserKey(org.OrgID, "u-1")
	for name, brk := range map[string]func(*bolt.Tx) error{
		"points at another visitor's conversation": func(tx *bolt.Tx) error {
			return tx.Bucket(bucketVisitorUsers).Put(key, []byte(anon.ID))
		},
		"points at a missing conversation": func(tx *bolt.Tx) error {
			return tx.Bucket(bucketVisitorUsers).Put(key, []byte(newID(PrefixConversation)))
		},
	} {
		if err := db.bolt.Update(brk); err != nil {
			t.Fatal(err)
		}
		problems := db.Check()
		if len(problems) == 0 || !strings.Contains(problems[0].Error(), "visitor_users: user \"u-1\"") {
			t.Errorf("%s: check reported %v", name, problems)
		}
	}
	if err := db.bolt.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVisitorUsers).Put(key, []byte(verified.Conversation.ID))
	}); err != nil {
		t.Fatal(err)
	}
}

// TestWrongUserHashWritesNothing: a refused hash answers unauthorized from a read.
func TestWrongUserHashWritesNothing(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	user := signedUser(t, db, org.OrgID, "u-1")
	before := db.CommitStats().Units
	_, _, err := db.CreateConversation(context.Background(), org.OrgID, NewConversation{User: &VerifiedUser{ID: "u-2", Hash: user.Hash}}, nil)
	wantCode(t, err, CodeUnauthorized)
	if after := db.CommitStats().Units; after != before {
		t.Fatalf("a refused hash ran %d write units", after-before)
	}
}
