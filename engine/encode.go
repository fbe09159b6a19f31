package engine

import (
	"strconv"

	"github.com/go-json-experiment/json/jsontext"
)

// The commit loop is one goroutine that every write waits on, so the JSON of a post is put
// together by hand, byte for byte what marshal makes (encode_test.go holds them equal): the
// conversation of every event without reflection, and the message from pieces encoded before
// the unit runs, so that only what the loop alone knows (seq, time) is written on it.

// appendTime appends t as the contract's JSON time, as Time.MarshalJSON does.
func appendTime(b []byte, t Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, timeLayout)
	return append(b, '"')
}

// appendString appends s as a JSON string, escaped as marshal escapes it. Every string reaching
// it was decoded from valid JSON or made by the engine, so it is valid UTF-8; one that is not
// fails like marshal would. Ids, statuses and most names are printable ASCII without a quote or
// a backslash, which need no escaping: those are copied as they are.
func appendString(b []byte, s string) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
			return jsontext.AppendQuote(b, s)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"'), nil
}

func appendStringOrNull(b []byte, s *string) ([]byte, error) {
	if s == nil {
		return append(b, "null"...), nil
	}
	return appendString(b, *s)
}

// appendConversation appends c's encoding, the same as marshal(c).
func appendConversation(b []byte, c *Conversation) ([]byte, error) {
	return appendConversationAt(b, c, nil)
}

// stamp is a time with its JSON, formatted once: a batch's units all write the batch's one
// time, several times each.
type stamp struct {
	at   Time
	json []byte
}

func newStamp(at Time) *stamp { return &stamp{at: at, json: appendTime(nil, at)} }

// appendTimeAt is appendTime, from now's JSON when t is now's time (nil now: always formatted).
func appendTimeAt(b []byte, t Time, now *stamp) []byte {
	if now != nil && t.Equal(now.at.Time) {
		return append(b, now.json...)
	}
	return appendTime(b, t)
}

// appendConversationAt is appendConversation with the times equal to now's copied from its JSON.
func appendConversationAt(b []byte, c *Conversation, now *stamp) ([]byte, error) {
	var err error
	b = append(b, `{"id":`...)
	if b, err = appendString(b, c.ID); err != nil {
		return nil, err
	}
	b = append(b, `,"status":`...)
	if b, err = appendString(b, string(c.Status)); err != nil {
		return nil, err
	}
	b = append(b, `,"assignee":`...)
	if b, err = appendStringOrNull(b, c.Assignee); err != nil {
		return nil, err
	}
	b = append(b, `,"visitor":{"name":`...)
	if b, err = appendStringOrNull(b, c.Visitor.Name); err != nil {
		return nil, err
	}
	b = append(b, `,"email":`...)
	if b, err = appendStringOrNull(b, c.Visitor.Email); err != nil {
		return nil, err
	}
	// omitempty, as json/v2 reads it: left out when it would encode as null or "".
	if u := c.Visitor.UserID; u != nil && *u != "" {
		b = append(b, `,"user_id":`...)
		if b, err = appendString(b, *u); err != nil {
			return nil, err
		}
	}
	if v := c.Visitor.Verified; v != nil {
		b = append(b, `,"verified":`...)
		b = strconv.AppendBool(b, *v)
	}
	b = append(b, `},"created_at":`...)
	b = appendTimeAt(b, c.CreatedAt, now)
	b = append(b, `,"last_activity_at":`...)
	b = appendTimeAt(b, c.LastActivityAt, now)
	return append(b, '}'), nil
}

// conversationJSON is appendConversation into a buffer of its own.
func conversationJSON(c *Conversation) ([]byte, error) {
	return appendConversation(make([]byte, 0, 256), c)
}

// conversationJSONAt is conversationJSON inside a unit, whose batch's time is now.
func conversationJSONAt(c *Conversation, now *stamp) ([]byte, error) {
	return appendConversationAt(make([]byte, 0, 256), c, now)
}

// messageDraft is a message encoded before its unit runs, split where the fields that only the
// unit knows go: seq at split, created_at at the end.
type messageDraft struct {
	msg   Message
	json  []byte // {"id":…,"conversation_id":…,"seq": then ,"role":…,"metadata":{…},"created_at":
	split int    // where seq goes
	// eventID is the id of the message's message.created event, when drafted with it.
	eventID string
}

// draftMessage encodes msg's fields other than seq and created_at. msg.ConversationID must be
// set: it is the conversation the unit reads, found or not.
func draftMessage(msg Message) (messageDraft, error) {
	var err error
	body := make([]byte, 0, len(msg.Text)+256)
	body = append(body, `{"id":`...)
	if body, err = appendString(body, msg.ID); err != nil {
		return messageDraft{}, err
	}
	body = append(body, `,"conversation_id":`...)
	if body, err = appendString(body, msg.ConversationID); err != nil {
		return messageDraft{}, err
	}
	body = append(body, `,"seq":`...)
	split := len(body)
	body = append(body, `,"role":`...)
	if body, err = appendString(body, string(msg.Role)); err != nil {
		return messageDraft{}, err
	}
	body = append(body, `,"text":`...)
	if body, err = appendString(body, msg.Text); err != nil {
		return messageDraft{}, err
	}
	body = append(body, `,"attachments":`...)
	if len(msg.Attachments) == 0 {
		// marshal writes a nil slice as [] too: json/v2 encodes nil slices as empty arrays.
		body = append(body, `[]`...)
	} else {
		raw, err := marshal(msg.Attachments)
		if err != nil {
			return messageDraft{}, err
		}
		body = append(body, raw...)
	}
	body = append(body, `,"metadata":{"source":`...)
	md := msg.Metadata
	if body, err = appendString(body, md.Source); err != nil {
		return messageDraft{}, err
	}
	for _, f := range [...]struct{ name, value string }{{"api_key_id", md.APIKeyID}, {"member_id", md.MemberID}, {"event", md.Event}} {
		if f.value == "" {
			continue
		}
		body = append(body, `,"`...)
		body = append(body, f.name...)
		body = append(body, `":`...)
		if body, err = appendString(body, f.value); err != nil {
			return messageDraft{}, err
		}
	}
	body = append(body, `},"created_at":`...)
	return messageDraft{msg: msg, json: body, split: split}, nil
}

// finish completes the draft with the fields the unit gives it, returning the message and its
// encoding (the same as marshal of the message).
func (d *messageDraft) finish(seq uint64, at Time) (Message, []byte) {
	return d.finishAt(seq, newStamp(at))
}

// finishAt is finish at a time whose JSON is formatted already.
func (d *messageDraft) finishAt(seq uint64, at *stamp) (Message, []byte) {
	msg := d.msg
	msg.Seq, msg.CreatedAt = seq, at.at
	out := make([]byte, 0, len(d.json)+len(at.json)+24)
	out = append(out, d.json[:d.split]...)
	out = strconv.AppendUint(out, seq, 10)
	out = append(out, d.json[d.split:]...)
	out = append(out, at.json...)
	return msg, append(out, '}')
}
