package engine

import (
	"context"
	"math"
	"strings"
	"unicode/utf8"

	json "github.com/go-json-experiment/json"
	bolt "go.etcd.io/bbolt"
)

// marshal is the engine's one JSON encoder. json/v2 leaves <, > and & as they are, so text is
// stored as sent (encoding/json's HTML escaping made each of them 6 bytes); Deterministic orders
// map keys (a conversation.updated event's changes) as encoding/json did, so the wire form stays.
func marshal(v any) ([]byte, error) { return json.Marshal(v, json.Deterministic(true)) }

// Message limits of section 6.
const (
	MaxTextLength  = 32_000
	MaxAttachments = 10
)

// AgentJoinedText is the system marker a human takeover inserts before the reply.
const AgentJoinedText = "A team member has joined the conversation."

// ValidateMessage trims text and checks section 6's body rules; it returns the text to store.
func ValidateMessage(text string, attachments int) (string, error) {
	text = strings.TrimSpace(text)
	if text == "" && attachments == 0 {
		return "", Errorf(CodeValidation, "a message needs text or at least one attachment")
	}
	if n := utf8.RuneCountInString(text); n > MaxTextLength {
		return "", Errorf(CodeValidation, "text is %d characters after trimming; the limit is %d", n, MaxTextLength).
			WithDetails(map[string]any{"field": "text", "length": n, "limit": MaxTextLength})
	}
	if attachments > MaxAttachments {
		return "", Errorf(CodeValidation, "%d attachments; the limit is %d", attachments, MaxAttachments).
			WithDetails(map[string]any{"field": "attachments", "limit": MaxAttachments})
	}
	return text, nil
}

// NewMessage is a message to post. Attachments are already stored assets.
type NewMessage struct {
	OrgID          string
	ConversationID string
	Author         Author
	APIKeyID       string // the key that posted it, for agents and bots
	// MemberID is the team member replying from the dashboard (an agent's reply with a
	// session); it brings section 12's assignment rule.
	MemberID    string
	Text        string
	Attachments []Attachment
}

// CheckMessage is section 6's status check as a caller runs it before any slow work (attachment
// fetches); PostMessage applies the same rule again inside its unit.
func CheckMessage(author Author, current Status) error {
	if !PlanMessage(author, current).Allowed {
		return invalidForMessage(author, current)
	}
	return nil
}

// PostMessage appends a message in one unit: any status change the author's rule makes (with its
// conversation.updated event), the takeover's system marker, then the message, each with its
// message.created event, and the idempotency record. The status rule is applied to the status
// read inside the transaction, so concurrent takeovers write exactly one marker. It returns the
// message and its JSON as stored, which is the 201 body and, for a keyed request, what a replay
// returns byte for byte.
func (db *DB) PostMessage(ctx context.Context, in NewMessage, idem *Idempotency) (Message, []byte, error) {
	text, err := ValidateMessage(in.Text, len(in.Attachments))
	if err != nil {
		return Message{}, nil, err
	}
	if !ValidID(PrefixConversation, in.ConversationID) {
		// Checked before the draft below, which would refuse an id it cannot encode as a failure
		// of its own: no such conversation can exist.
		return Message{}, nil, notFound("conversation")
	}
	attachments := in.Attachments
	if attachments == nil {
		attachments = []Attachment{}
	}
	// Everything of the messages but seq and time is encoded here, off the commit loop.
	msg := Message{ID: newID(PrefixMessage), ConversationID: in.ConversationID, Text: text, Attachments: attachments}
	switch in.Author {
	case AuthorAgent:
		msg.Role, msg.Metadata = RoleAssistant, MessageMetadata{Source: "api", APIKeyID: in.APIKeyID}
		if in.MemberID != "" {
			msg.Metadata = MessageMetadata{Source: "dashboard", MemberID: in.MemberID}
		}
	case AuthorBot:
		msg.Role, msg.Metadata = RoleAssistant, MessageMetadata{Source: "bot", APIKeyID: in.APIKeyID}
	default:
		msg.Role, msg.Metadata = RoleUser, MessageMetadata{Source: "widget"}
	}
	// What the unit shares with its caller is one value: each variable a closure captures by
	// reference is an allocation of its own.
	var u struct {
		// Whether a post takes over is known only in the unit, and a conversation is taken over
		// once: the takeover's marker, short and rare, is drafted there, when it is due.
		draft, marker messageDraft
		out           Message
		msgJSON       []byte
	}
	if u.draft, err = draftMessage(msg); err != nil {
		return Message{}, nil, err
	}
	u.draft.eventID = newID(PrefixEvent)
	err = db.update(ctx, in.OrgID, func(tx *Tx) error {
		rec, err := tx.conversation(in.OrgID, in.ConversationID)
		if err != nil {
			return err
		}
		plan := PlanMessage(in.Author, rec.Status)
		if !plan.Allowed {
			return invalidForMessage(in.Author, rec.Status)
		}
		old := *rec
		var changes map[string]Change
		if plan.NewState != old.Status {
			changes = map[string]Change{"status": {From: old.Status, To: plan.NewState}}
		}
		// The dashboard's rule (section 12): a member's reply takes an unassigned conversation,
		// judged here on the state inside the unit, so of two members replying at once exactly
		// one takes it; someone else's conversation is theirs until a PATCH reassigns it.
		if in.MemberID != "" {
			switch {
			case rec.Assignee == nil:
				member := in.MemberID
				rec.Assignee = &member
				if changes == nil {
					changes = map[string]Change{}
				}
				changes["assignee"] = Change{From: nil, To: member}
			case *rec.Assignee != in.MemberID:
				return Errorf(CodeInvalidState, "conversation is assigned to another team member; reassign it first").
					WithDetails(map[string]any{"assignee": *rec.Assignee})
			}
		}
		now := tx.now
		rec.LastActivityAt = now
		rec.Status = plan.NewState
		// Every event of this unit carries the conversation as it is after the unit: encode once.
		convJSON, err := conversationJSONAt(&rec.Conversation, tx.stamp)
		if err != nil {
			return err
		}
		if len(changes) > 0 {
			changesJSON, err := marshal(changes)
			if err != nil {
				return err
			}
			data := splice(`{"conversation":`, convJSON, `,"changes":`, changesJSON, `}`)
			if err := tx.appendEventJSON(in.OrgID, rec.ID, EventConversationUpdated, data); err != nil {
				return err
			}
		}
		if plan.Takeover {
			if u.marker.json == nil { // a batch that runs again keeps the marker's id
				u.marker, err = draftMessage(Message{
					ID: newID(PrefixMessage), ConversationID: rec.ID, Role: RoleSystem, Text: AgentJoinedText,
					Attachments: []Attachment{}, Metadata: MessageMetadata{Source: "system", Event: "agent_joined"},
				})
				if err != nil {
					return err
				}
			}
			if _, _, err := tx.appendMessage(rec, convJSON, &u.marker, now); err != nil {
				return err
			}
		}
		if u.out, u.msgJSON, err = tx.appendMessage(rec, convJSON, &u.draft, now); err != nil {
			return err
		}
		if err := tx.putConversationJSON(rec, &old, convJSON); err != nil {
			return err
		}
		if err := tx.putAssets(in.OrgID, attachments); err != nil {
			return err
		}
		if idem == nil {
			return nil
		}
		// The reply is the stored message, which never changes: the record points at it rather
		// than keeping a second copy of its text, and a replay reads the very same bytes.
		return tx.putIdempotencyMessage(in.OrgID, idem, idem.Status, rec.ID, u.out.Seq)
	})
	if err != nil {
		return Message{}, nil, err
	}
	return u.out, u.msgJSON, nil
}

// appendMessage gives the drafted message the conversation's next seq and stores it with its
// event, whose data splices the message and convJSON (the conversation's encoding after the
// unit), and returns the stored message with its encoding. The stored event points at the
// message instead of copying it (see appendMessageEvent). rec is updated in memory; the caller
// stores it once all of the unit's messages are appended.
func (tx *Tx) appendMessage(rec *conversationRecord, convJSON []byte, draft *messageDraft, now Time) (Message, []byte, error) {
	rec.LastSeq++
	var msg Message
	var msgJSON []byte
	if tx.stamp != nil && now.Equal(tx.stamp.at.Time) {
		msg, msgJSON = draft.finishAt(rec.LastSeq, tx.stamp)
	} else {
		msg, msgJSON = draft.finish(rec.LastSeq, now)
	}
	msgs := tx.bolt.Bucket(bucketMsgs)
	msgs.FillPercent = appendFill
	if err := msgs.Put(join([]byte(rec.ID), u64(msg.Seq)), msgJSON); err != nil {
		return Message{}, nil, err
	}
	tx.eventID = draft.eventID
	return msg, msgJSON, tx.appendMessageEvent(rec.OrgID, rec.ID, msg.Seq, msgJSON, convJSON)
}

// splice concatenates JSON fragments, given as strings or byte slices.
func splice(parts ...any) []byte {
	n := 0
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			n += len(v)
		case []byte:
			n += len(v)
		}
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			out = append(out, v...)
		case []byte:
			out = append(out, v...)
		}
	}
	return out
}

// RequestAgent is the visitor asking for a human: bot_active becomes agent_requested; in
// agent_requested or open nothing changes; a finished conversation refuses.
func (db *DB) RequestAgent(ctx context.Context, orgID, convID string, idem *Idempotency) (Conversation, []byte, error) {
	// As with a PATCH, a refusal or a no-op without a key is answered from a read.
	current, err := db.Conversation(orgID, convID)
	if err != nil {
		return Conversation{}, nil, err
	}
	moves, err := requestAgentMoves(current.Status)
	if err != nil {
		return Conversation{}, nil, err
	}
	if !moves && idem == nil {
		return encoded(current)
	}
	var out Conversation
	var body []byte
	err = db.update(ctx, orgID, func(tx *Tx) error {
		rec, err := tx.conversation(orgID, convID)
		if err != nil {
			return err
		}
		moves, err := requestAgentMoves(rec.Status)
		if err != nil {
			return err
		}
		if moves {
			old := *rec
			rec.Status = StatusAgentRequested
			rec.LastActivityAt = tx.now
			if err := tx.putConversation(rec, &old); err != nil {
				return err
			}
			changes := map[string]Change{"status": {From: old.Status, To: rec.Status}}
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

// encoded returns v with its JSON, the answer of a call that wrote nothing.
func encoded[T any](v T) (T, []byte, error) {
	body, err := marshal(v)
	return v, body, err
}

// requestAgentMoves is the visitor's request-agent rule: whether status moves to agent_requested,
// or invalid_state once the conversation is finished.
func requestAgentMoves(status Status) (bool, error) {
	switch status {
	case StatusBotActive:
		return true, nil
	case StatusAgentRequested, StatusOpen:
		return false, nil
	}
	return false, Errorf(CodeInvalidState, "conversation is %s: it can no longer request an agent", status).
		WithDetails(map[string]any{"status": string(status)})
}

// MaxPageBytes bounds a list page by the JSON it holds (section 3): a page ends early, reporting
// that more follow, before an item would take it past 4 MiB, so no request makes the server build
// an unbounded answer however large its items are. A page always holds at least one item (no
// item comes near the bound: request bodies are limited to 1 MiB).
const MaxPageBytes = 4 << 20

// pageFull reports whether a page of n items holding size bytes of JSON takes no item of next
// bytes more (one more byte for the comma before it).
func pageFull(n, limit, size, next int) bool {
	return n == limit || (n > 0 && size+next+1 > MaxPageBytes)
}

// ListMessages returns up to limit messages of a conversation with seq > after, oldest first, and
// whether more follow; the page also ends at MaxPageBytes.
func (db *DB) ListMessages(orgID, convID string, after uint64, limit int) ([]Message, bool, error) {
	if limit < 1 {
		return nil, false, errLimit
	}
	out := []Message{}
	more := false
	if after == math.MaxUint64 {
		return out, false, nil
	}
	err := db.view(func(btx *bolt.Tx) error {
		if _, err := readConversation(btx, orgID, convID); err != nil {
			return err
		}
		prefix := []byte(convID)
		c := btx.Bucket(bucketMsgs).Cursor()
		size := 0
		for k, v := c.Seek(join(prefix, u64(after+1))); k != nil && len(k) == len(prefix)+8 && string(k[:len(prefix)]) == convID; k, v = c.Next() {
			// The stored encoding is the one the page will carry: its length is the page's.
			if pageFull(len(out), limit, size, len(v)) {
				more = true
				return nil
			}
			size += len(v) + 1
			var m Message
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	return out, more, err
}
