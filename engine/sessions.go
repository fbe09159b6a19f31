package engine

import (
	"context"
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Secret prefixes of the dashboard.
const (
	SecretSession  = "as_"  // the session cookie's value
	SecretRealtime = "rtt_" // a single-use token for the auth frame of /realtime
	PrefixSession  = "ses_"
)

// Session lifetimes of section 12. LastSeenAt is written at most once per sessionTouchEvery, so
// an active dashboard costs one write a minute rather than one per request; idle expiry is
// therefore exact to within that minute.
const (
	SessionIdle       = 12 * time.Hour
	SessionMaxAge     = 30 * 24 * time.Hour
	sessionTouchEvery = time.Minute
	RealtimeTokenTTL  = 60 * time.Second
)

// Session is a signed-in member as the dashboard sees it.
type Session struct {
	ID        string `json:"-"`
	Member    Member `json:"member"`
	CSRFToken string `json:"csrf_token"`
}

type sessionRecord struct {
	ID              string `json:"id"`
	OrgID           string `json:"org_id"`
	MemberID        string `json:"member_id"`
	CSRFToken       string `json:"csrf_token"`
	PasswordVersion uint64 `json:"password_version"`
	CreatedAt       Time   `json:"created_at"`
	LastSeenAt      Time   `json:"last_seen_at"`
}

func (r sessionRecord) principal(m *memberRecord) Principal {
	return Principal{KeyID: r.ID, OrgID: r.OrgID, Kind: KeyMember, MemberID: m.ID, Role: m.Role, Name: m.Name, CreatedAt: r.CreatedAt}
}

var errSession = Errorf(CodeUnauthorized, "not signed in, or the session has ended; sign in again")

// SignIn checks an email and password and opens a session; it returns the cookie's secret,
// which is stored only as its hash. Wrong email, wrong password and a disabled member are the
// same 401 after the same work.
func (db *DB) SignIn(ctx context.Context, email, password string) (string, Session, error) {
	m, err := db.checkCredentials(email, password)
	if err != nil {
		return "", Session{}, err
	}
	secret := newSecret(SecretSession)
	rec := sessionRecord{ID: newID(PrefixSession), OrgID: m.OrgID, MemberID: m.ID, CSRFToken: newSecret(""), PasswordVersion: m.PasswordVersion}
	h := hashSecret(secret)
	err = db.update(ctx, m.OrgID, func(tx *Tx) error {
		rec.CreatedAt, rec.LastSeenAt = tx.now, tx.now
		return putJSON(tx.bolt.Bucket(bucketSessions), h[:], rec)
	})
	if err != nil {
		return "", Session{}, err
	}
	return secret, Session{ID: rec.ID, Member: m.Member, CSRFToken: rec.CSRFToken}, nil
}

// readSession is sessionState in a read transaction of its own.
func (db *DB) readSession(h [32]byte) (rec *sessionRecord, m *memberRecord, err error) {
	err = db.view(func(btx *bolt.Tx) error {
		rec, m, err = db.sessionState(btx, h)
		return err
	})
	return rec, m, err
}

// sessionState reads a session and its member and says whether it is still good: not expired,
// the member enabled, the password unchanged since it was opened.
func (db *DB) sessionState(btx *bolt.Tx, h [32]byte) (*sessionRecord, *memberRecord, error) {
	var rec sessionRecord
	found, err := getJSON(btx.Bucket(bucketSessions), h[:], &rec)
	if err != nil {
		return nil, nil, err
	}
	if !found {
		return nil, nil, errSession
	}
	now := db.clock()
	if now.Sub(rec.LastSeenAt.Time) >= SessionIdle || now.Sub(rec.CreatedAt.Time) >= SessionMaxAge {
		return nil, nil, errSession
	}
	m, err := readMember(btx, rec.OrgID, rec.MemberID)
	if err != nil {
		return nil, nil, err
	}
	if m.Disabled || m.PasswordVersion != rec.PasswordVersion {
		return nil, nil, errSession
	}
	return &rec, m, nil
}

// AuthenticateSession finds the principal and session of a cookie's secret. The member is read
// on every call, so disabling it or changing its password ends the session at once.
func (db *DB) AuthenticateSession(ctx context.Context, secret string) (Principal, Session, error) {
	if secret == "" {
		return Principal{}, Session{}, errSession
	}
	h := hashSecret(secret)
	rec, m, err := db.readSession(h)
	if err != nil {
		return Principal{}, Session{}, err
	}
	if db.clock().Sub(rec.LastSeenAt.Time) >= sessionTouchEvery {
		err := db.update(ctx, rec.OrgID, func(tx *Tx) error {
			cur, _, err := db.sessionState(tx.bolt, h)
			if err != nil {
				return err
			}
			cur.LastSeenAt = tx.now
			return putJSON(tx.bolt.Bucket(bucketSessions), h[:], cur)
		})
		if err != nil {
			return Principal{}, Session{}, err
		}
	}
	return rec.principal(m), Session{ID: rec.ID, Member: m.Member, CSRFToken: rec.CSRFToken}, nil
}

// SignOut ends the session of a cookie's secret; an unknown one is already ended.
func (db *DB) SignOut(ctx context.Context, orgID, secret string) error {
	h := hashSecret(secret)
	return db.update(ctx, orgID, func(tx *Tx) error {
		return tx.bolt.Bucket(bucketSessions).Delete(h[:])
	})
}

// ChangePassword sets a member's password after checking the current one, and ends every other
// session of the member (their password version no longer matches); the session of secret is
// carried over to the new version.
func (db *DB) ChangePassword(ctx context.Context, secret, current, next string) error {
	if err := CheckNewPassword(next, "new"); err != nil {
		return err
	}
	h := hashSecret(secret)
	rec, m, err := db.readSession(h)
	if err != nil {
		return err
	}
	if !checkPassword(m.PasswordHash, current) {
		return Errorf(CodeValidation, "the current password is wrong").WithDetails(map[string]any{"field": "current"})
	}
	newHash := hashPassword(next)
	return db.update(ctx, rec.OrgID, func(tx *Tx) error {
		cur, m, err := db.sessionState(tx.bolt, h)
		if err != nil {
			return err
		}
		m.PasswordHash = newHash
		m.PasswordVersion++
		cur.PasswordVersion = m.PasswordVersion
		if err := putJSON(tx.bolt.Bucket(bucketMembers), []byte(m.OrgID+m.ID), m); err != nil {
			return err
		}
		return putJSON(tx.bolt.Bucket(bucketSessions), h[:], cur)
	})
}

type realtimeGrant struct {
	principal Principal
	expires   time.Time
}

// maxRealtimeTokens bounds the tokens waiting to be used; a signed-in member needs one per
// WebSocket it opens.
const maxRealtimeTokens = 100_000

// IssueRealtimeToken makes a single-use token, valid for RealtimeTokenTTL, that authenticates a
// /realtime auth frame as who. Tokens live in memory only: a restart ends them, and the
// dashboard asks for another when it reconnects.
func (db *DB) IssueRealtimeToken(who Principal) (string, Time) {
	token := newSecret(SecretRealtime)
	now := db.clock()
	expires := now.Add(RealtimeTokenTTL)
	db.authMu.Lock()
	defer db.authMu.Unlock()
	if len(db.realtimeTokens) >= maxRealtimeTokens {
		for h, g := range db.realtimeTokens {
			if !now.Before(g.expires) {
				delete(db.realtimeTokens, h)
			}
		}
	}
	if len(db.realtimeTokens) < maxRealtimeTokens {
		db.realtimeTokens[hashSecret(token)] = realtimeGrant{principal: who, expires: expires}
	}
	return token, Time{expires.UTC().Truncate(time.Millisecond)}
}

// useRealtimeToken consumes a realtime token: it answers its principal once, before it expires.
// The member is checked again, so a token made just before a member was disabled opens nothing.
func (db *DB) useRealtimeToken(token string) (Principal, error) {
	h := hashSecret(token)
	db.authMu.Lock()
	g, ok := db.realtimeTokens[h]
	delete(db.realtimeTokens, h)
	db.authMu.Unlock()
	if !ok || !db.clock().Before(g.expires) {
		return Principal{}, errUnauthorized
	}
	var m *memberRecord
	err := db.view(func(btx *bolt.Tx) error {
		var err error
		m, err = readMember(btx, g.principal.OrgID, g.principal.MemberID)
		return err
	})
	if err != nil || m.Disabled {
		return Principal{}, errUnauthorized
	}
	return g.principal, nil
}

// maxPrunedSessions bounds one prune's write, so a sweep never holds the commit loop long.
const maxPrunedSessions = 10_000

// EndedSession names a session a prune deleted, for closing what it still holds open (the
// dashboard's WebSockets, which authenticated once and are not asked again).
type EndedSession struct{ OrgID, ID string }

// PruneSessions deletes sessions that can no longer be used: idle or too old, or of a member
// that was disabled or changed its password since. Those are refused anyway; pruning keeps the
// bucket from growing with every sign-in. It returns how many it deleted.
func (db *DB) PruneSessions(ctx context.Context) (int, error) {
	ended, err := db.pruneSessions(ctx)
	return len(ended), err
}

func (db *DB) pruneSessions(ctx context.Context) ([]EndedSession, error) {
	var dead [][]byte
	var ended []EndedSession
	err := db.view(func(btx *bolt.Tx) error {
		sessions := btx.Bucket(bucketSessions)
		return sessions.ForEach(func(k, v []byte) error {
			if len(dead) >= maxPrunedSessions || len(k) != 32 {
				return nil
			}
			var h [32]byte
			copy(h[:], k)
			if _, _, err := db.sessionState(btx, h); err != nil {
				dead = append(dead, append([]byte(nil), k...))
				var rec sessionRecord
				if json.Unmarshal(v, &rec) == nil {
					ended = append(ended, EndedSession{OrgID: rec.OrgID, ID: rec.ID})
				}
			}
			return nil
		})
	})
	if err != nil || len(dead) == 0 {
		return nil, err
	}
	err = db.Update(ctx, func(tx *Tx) error {
		b := tx.bolt.Bucket(bucketSessions)
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ended, nil
}
