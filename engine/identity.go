package engine

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"unicode"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
)

// Identity verification: a site whose visitors are signed in proves a visitor's user id to the
// widget with hex(HMAC-SHA256(identity secret, user id)), computed on its own server. The secret
// is the HMAC key exactly as shown (its UTF-8 bytes, prefix included). Unlike the other secrets
// it is stored as is: checking a hash needs the key itself.

// SecretIdentity prefixes an org's identity secret.
const SecretIdentity = "ids_"

// MaxUserIDLength bounds a verified visitor's user id, in Unicode code points.
const MaxUserIDLength = 255

// IdentitySecret is an org's identity secret as GET and POST /org/identity-secret show it.
type IdentitySecret struct {
	Secret    string `json:"secret"`
	CreatedAt Time   `json:"created_at"`
}

func identityKey(orgID string) []byte { return []byte("identity/" + orgID) }

// visitorUserKey is the visitor_users key of a user id of an org: org ids have a fixed length,
// so the user id needs no separator.
func visitorUserKey(orgID, userID string) []byte { return []byte(orgID + userID) }

// IdentitySecret returns orgID's identity secret, making it on first use.
func (db *DB) IdentitySecret(ctx context.Context, orgID string) (IdentitySecret, error) {
	var cur IdentitySecret
	var found bool
	err := db.view(func(btx *bolt.Tx) error {
		var err error
		found, err = getJSON(btx.Bucket(bucketMeta), identityKey(orgID), &cur)
		return err
	})
	if err != nil || found {
		return cur, err
	}
	made, _, err := db.putIdentitySecret(ctx, orgID, false, nil)
	return made, err
}

// RotateIdentitySecret replaces orgID's identity secret: hashes made with the old one are
// refused from the commit on, while visitor tokens already handed out keep working. It returns
// the answer's encoding too, as every write does (the bytes a keyed retry gets back).
func (db *DB) RotateIdentitySecret(ctx context.Context, orgID string, idem *Idempotency) (IdentitySecret, []byte, error) {
	return db.putIdentitySecret(ctx, orgID, true, idem)
}

func (db *DB) putIdentitySecret(ctx context.Context, orgID string, replace bool, idem *Idempotency) (IdentitySecret, []byte, error) {
	fresh := newSecret(SecretIdentity)
	var out IdentitySecret
	var body []byte
	err := db.update(ctx, orgID, func(tx *Tx) error {
		if tx.bolt.Bucket(bucketOrgs).Get([]byte(orgID)) == nil {
			return notFound("org")
		}
		meta := tx.bolt.Bucket(bucketMeta)
		// Two first reads racing each other must agree on one secret.
		if found, err := getJSON(meta, identityKey(orgID), &out); err != nil || (found && !replace) {
			return err
		}
		out = IdentitySecret{Secret: fresh, CreatedAt: tx.now}
		raw, err := json.Marshal(out)
		if err != nil {
			return err
		}
		if err := meta.Put(identityKey(orgID), raw); err != nil {
			return err
		}
		body, err = tx.reply(orgID, idem, out)
		return err
	})
	return out, body, err
}

// VerifiedUser is a user id a page claims for its visitor and the hash that proves it.
type VerifiedUser struct {
	ID   string
	Hash string
}

// validateUserID refuses ids no site would sign: empty, too long, or with control characters
// (which a log or a dashboard would render badly). Ids are not trimmed: the hash covers the
// exact bytes.
func validateUserID(id string) error {
	bad := func(msg string) error {
		return Errorf(CodeValidation, "user_id %s", msg).WithDetails(map[string]any{"field": "user_id"})
	}
	switch n := utf8.RuneCountInString(id); {
	case n == 0:
		return bad("must not be empty")
	case n > MaxUserIDLength:
		return bad(fmt.Sprintf("is %d characters; the limit is %d", n, MaxUserIDLength))
	}
	for _, r := range id {
		if unicode.IsControl(r) {
			return bad("must not contain control characters")
		}
	}
	return nil
}

// userHashMatches compares in constant time: how much of a forged hash was right must not show
// in the answer's timing. A missing secret matches nothing.
func userHashMatches(secret, userID, userHash string) bool {
	if secret == "" {
		return false
	}
	got, err := hex.DecodeString(userHash)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(userID))
	return hmac.Equal(got, mac.Sum(nil))
}

func errWrongUserHash() error {
	return Errorf(CodeUnauthorized, "user_hash does not prove user_id: sign the user id with the org's identity secret (hex HMAC-SHA256)")
}

// verifyUser checks u against the org's current secret inside the unit, so a rotation that
// committed before it is always seen.
func (tx *Tx) verifyUser(orgID string, u VerifiedUser) error {
	var cur IdentitySecret
	if _, err := getJSON(tx.bolt.Bucket(bucketMeta), identityKey(orgID), &cur); err != nil {
		return err
	}
	if !userHashMatches(cur.Secret, u.ID, u.Hash) {
		return errWrongUserHash()
	}
	return nil
}

// precheckUser answers a wrong hash from a read, so a forged request never costs a write unit
// (and its batch neighbours a re-run).
func (db *DB) precheckUser(orgID string, u VerifiedUser) error {
	if err := validateUserID(u.ID); err != nil {
		return err
	}
	var cur IdentitySecret
	if err := db.view(func(btx *bolt.Tx) error {
		_, err := getJSON(btx.Bucket(bucketMeta), identityKey(orgID), &cur)
		return err
	}); err != nil {
		return err
	}
	if !userHashMatches(cur.Secret, u.ID, u.Hash) {
		return errWrongUserHash()
	}
	return nil
}

// continuable reports whether a verified user's conversation is handed to them again rather
// than a new one opened: a resolved thread reopens with the next message; closed and archived
// ones are over.
func continuable(s Status) bool { return s != StatusClosed && s != StatusArchived }

// openForUser runs inside CreateConversation's unit for a verified visitor. It returns the
// user's continuable conversation if they have one (found), else records convID as theirs, or,
// with resumeOnly, answers not_found and records nothing.
func (tx *Tx) openForUser(orgID, convID string, u VerifiedUser, resumeOnly bool) (rec *conversationRecord, found bool, err error) {
	if err := tx.verifyUser(orgID, u); err != nil {
		return nil, false, err
	}
	index := tx.bolt.Bucket(bucketVisitorUsers)
	key := visitorUserKey(orgID, u.ID)
	if prev := index.Get(key); prev != nil {
		rec, err := readConversation(tx.bolt, orgID, string(prev))
		if err != nil {
			return nil, false, err
		}
		if continuable(rec.Status) {
			return rec, true, nil
		}
	}
	if resumeOnly {
		return nil, false, errNoConversationToResume()
	}
	return nil, false, index.Put(key, []byte(convID))
}

func errNoConversationToResume() error {
	return Errorf(CodeNotFound, "this user has no conversation to continue")
}

// hasConversationToResume answers a resume-only open from a read when there is nothing to
// resume, so a page load of a user without a thread costs no write.
func (db *DB) hasConversationToResume(orgID string, u VerifiedUser) (bool, error) {
	var ok bool
	err := db.view(func(btx *bolt.Tx) error {
		prev := btx.Bucket(bucketVisitorUsers).Get(visitorUserKey(orgID, u.ID))
		if prev == nil {
			return nil
		}
		rec, err := readConversation(btx, orgID, string(prev))
		if err != nil {
			return err
		}
		ok = continuable(rec.Status)
		return nil
	})
	return ok, err
}

// checkVisitorUsers verifies that every verified user's entry points at a conversation of the
// same org whose visitor is that user, verified.
func checkVisitorUsers(index, convs *bolt.Bucket, p *problemList) {
	index.ForEach(func(k, v []byte) error {
		if len(k) <= orgIDLen {
			p.add("visitor_users: entry %q is too short", k)
			return nil
		}
		orgID, userID := string(k[:orgIDLen]), string(k[orgIDLen:])
		raw := convs.Get([]byte(orgID + string(v)))
		if raw == nil {
			p.add("visitor_users: user %q of org %s points at a missing conversation %s", userID, orgID, v)
			return nil
		}
		var rec conversationRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return nil // convs' own check reports it
		}
		if rec.Visitor.UserID == nil || *rec.Visitor.UserID != userID || rec.Visitor.Verified == nil || !*rec.Visitor.Verified {
			p.add("visitor_users: user %q of org %s points at conversation %s, whose visitor is not that verified user", userID, orgID, v)
		}
		return nil
	})
}
