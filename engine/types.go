package engine

import (
	"encoding/json"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// Time is a UTC instant that encodes as RFC 3339 with milliseconds, the contract's one time format.
type Time struct{ time.Time }

const timeLayout = "2006-01-02T15:04:05.000Z"

func (t Time) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, len(timeLayout)+2)
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, timeLayout)
	return append(b, '"'), nil
}

func (t *Time) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return err
	}
	t.Time = v.UTC()
	return nil
}

// Org is a tenant. Everything else belongs to exactly one org.
type Org struct {
	ID            string  `json:"id"`
	Name          string  `json:"name"`
	InitialStatus Status  `json:"initial_status"`
	Rate          float64 `json:"rate"`  // requests per second of the org's shared token bucket
	Burst         int     `json:"burst"` // size of that bucket
	CreatedAt     Time    `json:"created_at"`
}

// KeyKind tells what a secret opens.
type KeyKind string

const (
	KeyAPI     KeyKind = "api"     // ak_: the team's systems, the whole org
	KeyWidget  KeyKind = "widget"  // wk_: public, only opens conversations
	KeyVisitor KeyKind = "visitor" // vt_: one visitor, one conversation
	// KeyMember is a team member signed in to the dashboard (a session cookie, or a realtime
	// token made from one): the whole org, like an API key, and MemberID says who.
	KeyMember KeyKind = "member"
)

// Principal is who a request acts for, as found from its bearer secret.
type Principal struct {
	KeyID          string  `json:"id"`
	OrgID          string  `json:"org_id"`
	Kind           KeyKind `json:"kind"`
	ConversationID string  `json:"conversation_id,omitempty"` // visitor tokens only
	Name           string  `json:"name,omitempty"`
	CreatedAt      Time    `json:"created_at"`
	// MemberID and Role are set for KeyMember only; such principals are never stored in keys.
	MemberID string     `json:"member_id,omitempty"`
	Role     MemberRole `json:"role,omitempty"`
}

// Visitor is what the team knows of the person on the other side; both fields are optional.
type Visitor struct {
	Name  *string `json:"name"`
	Email *string `json:"email"`
	// UserID is set only for a visitor whose site proved it (identity verification).
	UserID *string `json:"user_id,omitempty"`
	// Verified is true for a proven user id, false when a widget visitor gave a name or email
	// that nothing proves, and absent otherwise (an anonymous visitor, or one the team entered).
	Verified *bool `json:"verified,omitempty"`
}

// Conversation is a thread between one visitor and the org, as the API shows it.
type Conversation struct {
	ID             string  `json:"id"`
	Status         Status  `json:"status"`
	Assignee       *string `json:"assignee"`
	Visitor        Visitor `json:"visitor"`
	CreatedAt      Time    `json:"created_at"`
	LastActivityAt Time    `json:"last_activity_at"`
}

// conversationRecord is the stored form: the public fields plus what only the engine needs.
type conversationRecord struct {
	Conversation
	OrgID   string `json:"org_id"`
	LastSeq uint64 `json:"last_seq"`
}

// Role of a message's author, as the visitor's chat window renders it.
type Role string

const (
	RoleAssistant Role = "assistant"
	RoleUser      Role = "user"
	RoleSystem    Role = "system"
)

// Attachment is an image stored in the org's asset library and referenced by a message.
type Attachment struct {
	FileURL  string `json:"file_url"`
	MimeType string `json:"mime_type"`
	Size     int64  `json:"size"`
	Width    int    `json:"width"`
	Height   int    `json:"height"`
	Hash     string `json:"hash"`
}

// MessageMetadata says where a message came from.
type MessageMetadata struct {
	Source   string `json:"source"`
	APIKeyID string `json:"api_key_id,omitempty"`
	MemberID string `json:"member_id,omitempty"` // replies from the dashboard
	Event    string `json:"event,omitempty"`
}

// Message is one entry of a thread; Seq is 1, 2, 3… per conversation and never reused.
type Message struct {
	ID             string          `json:"id"`
	ConversationID string          `json:"conversation_id"`
	Seq            uint64          `json:"seq"`
	Role           Role            `json:"role"`
	Text           string          `json:"text"`
	Attachments    []Attachment    `json:"attachments"`
	Metadata       MessageMetadata `json:"metadata"`
	CreatedAt      Time            `json:"created_at"`
}

// Event types of the org's log.
const (
	EventMessageCreated      = "message.created"
	EventConversationUpdated = "conversation.updated"
)

// Change is one field's before and after in a conversation.updated event.
type Change struct {
	From any `json:"from"`
	To   any `json:"to"`
}

// MessageCreatedData is the data of a message.created event.
type MessageCreatedData struct {
	Message      Message      `json:"message"`
	Conversation Conversation `json:"conversation"`
}

// ConversationUpdatedData is the data of a conversation.updated event.
type ConversationUpdatedData struct {
	Conversation Conversation      `json:"conversation"`
	Changes      map[string]Change `json:"changes"`
}

// Event is one durable fact of an org's log. Offset is 1, 2, 3… per org in commit order; ID is
// also the webhook-id of its deliveries.
type Event struct {
	ID             string          `json:"id"`
	Offset         uint64          `json:"offset"`
	Type           string          `json:"type"`
	CreatedAt      Time            `json:"created_at"`
	Data           json.RawMessage `json:"data"`
	OrgID          string          `json:"-"`
	ConversationID string          `json:"-"`
}

// storedEvent is an event as the log stores it: its own fields, the routing fields that the
// public encoding leaves out, and either Data or, for a message.created event, a reference to its
// message (MessageSeq of ConversationID) with the conversation as the event saw it, from which
// ListEvents renders the same Data.
type storedEvent struct {
	ID             string         `json:"id"`
	Offset         uint64         `json:"offset"`
	Type           string         `json:"type"`
	CreatedAt      Time           `json:"created_at"`
	OrgID          string         `json:"org_id"`
	ConversationID string         `json:"conversation_id"`
	Data           jsontext.Value `json:"data,omitempty"`
	MessageSeq     uint64         `json:"message_seq,omitempty"`
	Conversation   jsontext.Value `json:"conversation,omitempty"`
}
