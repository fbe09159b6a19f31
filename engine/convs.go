package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Field limits, in Unicode code points.
const (
	MaxNameLength     = 200
	MaxEmailLength    = 320
	MaxAssigneeLength = 200
)

// NewConversation describes a conversation to open. An empty Status takes the org's initial one.
type NewConversation struct {
	Status  Status
	Visitor Visitor
	// User, when set, is a verified visitor: a wrong hash is refused, and a user who already has
	// a continuable conversation gets it again (with a new visitor token) instead of a new one.
	User *VerifiedUser
	// ResumeOnly (with User) only hands back the user's conversation: when they have none it
	// is not_found and nothing is made, so a page can show a signed-in user's thread on load
	// without opening one.
	ResumeOnly bool
	// Unproven marks the visitor's name and email as theirs to claim (the widget's), shown with
	// "verified": false.
	Unproven bool
}

// CreatedConversation is a new conversation with the visitor token made for it, shown only here.
type CreatedConversation struct {
	Conversation Conversation `json:"conversation"`
	VisitorToken string       `json:"visitor_token"`
}

func creatableStatus(s Status) bool {
	return s == StatusBotActive || s == StatusAgentRequested || s == StatusOpen
}

// ValidateVisitor trims the visitor's fields, turns blanks into nulls and checks their lengths.
func ValidateVisitor(v Visitor) (Visitor, error) {
	clean := func(p *string, field string, limit int) (*string, error) {
		if p == nil {
			return nil, nil
		}
		s := strings.TrimSpace(*p)
		if s == "" {
			return nil, nil
		}
		if n := len([]rune(s)); n > limit {
			return nil, Errorf(CodeValidation, "visitor.%s is %d characters; the limit is %d", field, n, limit).
				WithDetails(map[string]any{"field": "visitor." + field})
		}
		return &s, nil
	}
	var err error
	v.UserID, v.Verified = nil, nil // only identity verification sets them, never a body
	if v.Name, err = clean(v.Name, "name", MaxNameLength); err != nil {
		return v, err
	}
	if v.Email, err = clean(v.Email, "email", MaxEmailLength); err != nil {
		return v, err
	}
	if v.Email != nil && !strings.Contains(*v.Email, "@") {
		return v, Errorf(CodeValidation, "visitor.email is not an email address").
			WithDetails(map[string]any{"field": "visitor.email"})
	}
	return v, nil
}

// CreateConversation opens a conversation in orgID and makes its visitor token.
func (db *DB) CreateConversation(ctx context.Context, orgID string, in NewConversation, idem *Idempotency) (CreatedConversation, []byte, error) {
	if in.Status != "" && !creatableStatus(in.Status) {
		return CreatedConversation{}, nil, Errorf(CodeValidation, "status must be bot_active, agent_requested or open").
			WithDetails(map[string]any{"field": "status"})
	}
	visitor, err := ValidateVisitor(in.Visitor)
	if err != nil {
		return CreatedConversation{}, nil, err
	}
	if in.User != nil {
		if err := db.precheckUser(orgID, *in.User); err != nil {
			return CreatedConversation{}, nil, err
		}
		if in.ResumeOnly {
			if ok, err := db.hasConversationToResume(orgID, *in.User); err != nil || !ok {
				if err == nil {
					err = errNoConversationToResume()
				}
				return CreatedConversation{}, nil, err
			}
		}
		id, yes := in.User.ID, true
		visitor.UserID, visitor.Verified = &id, &yes
	} else if in.Unproven && (visitor.Name != nil || visitor.Email != nil) {
		no := false
		visitor.Verified = &no
	}
	var out CreatedConversation
	var body []byte
	token := newSecret(SecretVisitor)
	convID := newID(PrefixConversation)
	keyID := newID(PrefixKey)
	err = db.update(ctx, orgID, func(tx *Tx) error {
		var org Org
		found, err := getJSON(tx.bolt.Bucket(bucketOrgs), []byte(orgID), &org)
		if err != nil {
			return err
		}
		if !found {
			return notFound("org")
		}
		if in.User != nil {
			prev, found, err := tx.openForUser(orgID, convID, *in.User, in.ResumeOnly)
			if err != nil {
				return err
			}
			if found {
				if err := tx.putKey(token, Principal{KeyID: keyID, OrgID: orgID, Kind: KeyVisitor, ConversationID: prev.ID, CreatedAt: tx.now}); err != nil {
					return err
				}
				out = CreatedConversation{Conversation: prev.Conversation, VisitorToken: token}
				body, err = tx.reply(orgID, idem, out)
				return err
			}
		}
		status := in.Status
		if status == "" {
			status = org.InitialStatus
		}
		now := tx.now
		rec := &conversationRecord{
			Conversation: Conversation{ID: convID, Status: status, Visitor: visitor, CreatedAt: now, LastActivityAt: now},
			OrgID:        orgID,
		}
		if err := tx.putConversation(rec, nil); err != nil {
			return err
		}
		if err := tx.putKey(token, Principal{KeyID: keyID, OrgID: orgID, Kind: KeyVisitor, ConversationID: convID, CreatedAt: now}); err != nil {
			return err
		}
		out = CreatedConversation{Conversation: rec.Conversation, VisitorToken: token}
		body, err = tx.reply(orgID, idem, out)
		return err
	})
	if err != nil {
		return CreatedConversation{}, nil, err
	}
	return out, body, nil
}

// Conversation returns one conversation of orgID; another org's conversation is not found.
func (db *DB) Conversation(orgID, convID string) (Conversation, error) {
	var rec *conversationRecord
	err := db.view(func(btx *bolt.Tx) error {
		var err error
		rec, err = readConversation(btx, orgID, convID)
		return err
	})
	if err != nil {
		return Conversation{}, err
	}
	return rec.Conversation, nil
}

// ConversationPatch is a PATCH: nil Status leaves it, SetAssignee with a nil Assignee unassigns.
type ConversationPatch struct {
	Status      *Status
	SetAssignee bool
	Assignee    *string
}

// UpdateConversation applies a PATCH. A status equal to the current one is a no-op; a change
// appends one conversation.updated event whose changes list every field that moved.
func (db *DB) UpdateConversation(ctx context.Context, orgID, convID string, patch ConversationPatch, idem *Idempotency) (Conversation, []byte, error) {
	if patch.Status != nil && !patch.Status.Valid() {
		return Conversation{}, nil, Errorf(CodeValidation, "status %q is not one of bot_active, agent_requested, open, resolved, closed, archived", *patch.Status).
			WithDetails(map[string]any{"field": "status"})
	}
	if patch.SetAssignee && patch.Assignee != nil {
		a := strings.TrimSpace(*patch.Assignee)
		patch.Assignee = &a
		// A team member of the org (disabled ones too: reassigning away from someone who
		// left must not need them enabled again), or null.
		var member bool
		if ValidID(PrefixMember, a) {
			if err := db.view(func(btx *bolt.Tx) error { member = memberIsInOrg(btx, orgID, a); return nil }); err != nil {
				return Conversation{}, nil, err
			}
		}
		if !member {
			return Conversation{}, nil, Errorf(CodeValidation, "assignee must be the id of a team member of this org (mem_…), or null to unassign").
				WithDetails(map[string]any{"field": "assignee"})
		}
	}
	// Judge the patch on a read first: a refused transition or a no-op (without a key to store)
	// is answered without a write, and never costs its batch neighbours a re-run.
	current, err := db.Conversation(orgID, convID)
	if err != nil {
		return Conversation{}, nil, err
	}
	probe := conversationRecord{Conversation: current}
	changes, err := patch.apply(&probe, db.now())
	if err != nil {
		return Conversation{}, nil, err
	}
	if len(changes) == 0 && idem == nil {
		return encoded(current)
	}
	var out Conversation
	var body []byte
	err = db.update(ctx, orgID, func(tx *Tx) error {
		rec, err := tx.conversation(orgID, convID)
		if err != nil {
			return err
		}
		old := *rec
		changes, err := patch.apply(rec, tx.now)
		if err != nil {
			return err
		}
		if len(changes) > 0 {
			if err := tx.putConversation(rec, &old); err != nil {
				return err
			}
			if err := tx.appendEvent(orgID, convID, EventConversationUpdated, ConversationUpdatedData{Conversation: rec.Conversation, Changes: changes}); err != nil {
				return err
			}
		}
		out = rec.Conversation
		body, err = tx.reply(orgID, idem, out)
		return err
	})
	if err != nil {
		return Conversation{}, nil, err
	}
	return out, body, nil
}

// apply makes the patch's changes to rec and lists them; a transition section 4 forbids is
// invalid_state and changes nothing.
func (patch ConversationPatch) apply(rec *conversationRecord, now Time) (map[string]Change, error) {
	changes := map[string]Change{}
	if patch.Status != nil && *patch.Status != rec.Status {
		if !CanTransition(rec.Status, *patch.Status) {
			return nil, Errorf(CodeInvalidState, "cannot move a conversation from %s to %s", rec.Status, *patch.Status).
				WithDetails(map[string]any{"from": string(rec.Status), "to": string(*patch.Status)})
		}
		changes["status"] = Change{From: rec.Status, To: *patch.Status}
		rec.Status = *patch.Status
		rec.LastActivityAt = now
	}
	if patch.SetAssignee && !sameString(patch.Assignee, rec.Assignee) {
		changes["assignee"] = Change{From: rec.Assignee, To: patch.Assignee}
		rec.Assignee = patch.Assignee
	}
	return changes, nil
}

func sameString(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// ListConversations returns orgID's conversations, newest activity first, optionally of one
// status. cursor is the opaque next value of a previous page; nil starts at the newest. A page
// also ends at MaxPageBytes.
func (db *DB) ListConversations(orgID string, status Status, cursor []byte, limit int) ([]Conversation, []byte, error) {
	if limit < 1 {
		return nil, nil, errLimit
	}
	sb := byte(anyStatus)
	if status != "" {
		if !status.Valid() {
			return nil, nil, Errorf(CodeValidation, "status %q is not a conversation status", status).WithDetails(map[string]any{"field": "status"})
		}
		sb = byte(status.index())
	}
	prefix := append([]byte(orgID), sb)
	if cursor != nil && !bytes.HasPrefix(cursor, prefix) {
		return nil, nil, Errorf(CodeValidation, "cursor does not belong to this list").WithDetails(map[string]any{"field": "cursor"})
	}
	var out []Conversation
	var next []byte
	err := db.view(func(btx *bolt.Tx) error {
		c := btx.Bucket(bucketActivity).Cursor()
		var k []byte
		if cursor == nil {
			k, _ = c.Seek(prefix)
		} else {
			k, _ = c.Seek(cursor)
			if bytes.Equal(k, cursor) {
				k, _ = c.Next()
			}
		}
		size := 0
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			convID := string(invert(k[len(prefix)+8:]))
			// The stored record is the conversation's JSON plus a few engine fields: at least
			// what the page will carry.
			stored := len(btx.Bucket(bucketConvs).Get([]byte(orgID + convID)))
			if pageFull(len(out), limit, size, stored) {
				next = lastKey(out, prefix)
				return nil
			}
			size += stored + 1
			rec, err := readConversation(btx, orgID, convID)
			if err != nil {
				return err
			}
			out = append(out, rec.Conversation)
		}
		return nil
	})
	return out, next, err
}

// lastKey rebuilds the index key of the page's last conversation, which is where the next page
// starts (exclusive).
func lastKey(page []Conversation, prefix []byte) []byte {
	last := page[len(page)-1]
	return activityKey(prefix, last.LastActivityAt, last.ID)
}

// activityKey sorts newest first: the time is inverted, and so is the id, which breaks ties within
// a millisecond by creation order (ULIDs grow), newest first as well.
func activityKey(prefix []byte, at Time, convID string) []byte {
	// One allocation: each post deletes and puts two of these on the commit loop.
	k := make([]byte, 0, len(prefix)+8+len(convID))
	k = append(k, prefix...)
	k = binary.BigEndian.AppendUint64(k, math.MaxUint64-uint64(at.UnixMilli()))
	for i := 0; i < len(convID); i++ {
		k = append(k, ^convID[i])
	}
	return k
}

func invert(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		out[i] = ^c
	}
	return out
}

func readConversation(btx *bolt.Tx, orgID, convID string) (*conversationRecord, error) {
	if !ValidID(PrefixConversation, convID) {
		return nil, notFound("conversation")
	}
	raw := btx.Bucket(bucketConvs).Get([]byte(orgID + convID))
	if raw == nil {
		return nil, notFound("conversation")
	}
	var rec conversationRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

// putConversation stores rec and keeps the activity index and per-status counts in step with it;
// old is the stored version before this unit changed it, nil for a new conversation.
func (tx *Tx) putConversation(rec *conversationRecord, old *conversationRecord) error {
	convJSON, err := conversationJSON(&rec.Conversation)
	if err != nil {
		return err
	}
	return tx.putConversationJSON(rec, old, convJSON)
}

// putConversationJSON is putConversation with the public part already encoded: the stored
// record is that encoding plus the engine's own fields.
func (tx *Tx) putConversationJSON(rec *conversationRecord, old *conversationRecord, convJSON []byte) error {
	stored := make([]byte, 0, len(convJSON)+80)
	stored = append(stored, convJSON[:len(convJSON)-1]...)
	stored = append(stored, `,"org_id":"`...)
	stored = append(stored, rec.OrgID...)
	stored = append(stored, `","last_seq":`...)
	stored = strconv.AppendUint(stored, rec.LastSeq, 10)
	stored = append(stored, '}')
	if err := tx.bolt.Bucket(bucketConvs).Put([]byte(rec.OrgID+rec.ID), stored); err != nil {
		return err
	}
	tx.cacheConversation(rec)
	idx := tx.bolt.Bucket(bucketActivity)
	org := []byte(rec.OrgID)
	if old != nil {
		if old.Status == rec.Status && old.LastActivityAt.Equal(rec.LastActivityAt.Time) {
			return nil
		}
		for _, sb := range []byte{anyStatus, byte(old.Status.index())} {
			if err := idx.Delete(activityKey(append(org, sb), old.LastActivityAt, old.ID)); err != nil {
				return err
			}
		}
		if old.Status != rec.Status {
			if err := tx.addCount(old.Status, -1); err != nil {
				return err
			}
		}
	}
	for _, sb := range []byte{anyStatus, byte(rec.Status.index())} {
		if err := idx.Put(activityKey(append(org[:len(org):len(org)], sb), rec.LastActivityAt, rec.ID), nil); err != nil {
			return err
		}
	}
	if old == nil || old.Status != rec.Status {
		return tx.addCount(rec.Status, 1)
	}
	return nil
}

func countKey(s Status) []byte { return []byte("count/" + string(s)) }

func (tx *Tx) addCount(s Status, delta int64) error {
	b := tx.bolt.Bucket(bucketMeta)
	var n uint64
	if v := b.Get(countKey(s)); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	return b.Put(countKey(s), u64(uint64(int64(n)+delta)))
}

// CountByStatus returns how many conversations, across all orgs, are in each status.
func (db *DB) CountByStatus() (map[Status]uint64, error) {
	out := make(map[Status]uint64, len(Statuses))
	err := db.view(func(btx *bolt.Tx) error {
		b := btx.Bucket(bucketMeta)
		for _, s := range Statuses {
			if v := b.Get(countKey(s)); len(v) == 8 {
				out[s] = binary.BigEndian.Uint64(v)
			} else {
				out[s] = 0
			}
		}
		return nil
	})
	return out, err
}
