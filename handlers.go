package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"github.com/awardee/awardee/engine"
	json "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// list is the contract's page shape.
type list[T any] struct {
	Data       []T     `json:"data"`
	NextCursor *string `json:"next_cursor"`
}

func (s *server) createConversation(c *call) (any, error) {
	return s.openConversation(c, true)
}

// widgetCreateConversation opens in the org's initial status: a visitor does not choose it.
func (s *server) widgetCreateConversation(c *call) (any, error) {
	return s.openConversation(c, false)
}

// openConversation decodes {"status"?, "visitor"?}; status is read only when the caller may
// choose it.
func (s *server) openConversation(c *call, statusAllowed bool) (any, error) {
	var body struct {
		Status   *string         `json:"status"`
		Visitor  *engine.Visitor `json:"visitor"`
		UserID   *string         `json:"user_id"`
		UserHash *string         `json:"user_hash"`
		Resume   bool            `json:"resume_only"`
	}
	if err := decodeJSON(c.ctx.PostBody(), &body, true); err != nil {
		return nil, err
	}
	in := engine.NewConversation{Unproven: !statusAllowed}
	if !statusAllowed {
		user, err := verifiedUser(body.UserID, body.UserHash)
		if err != nil {
			return nil, err
		}
		in.User = user
		if body.Resume && user == nil {
			return nil, engine.Errorf(engine.CodeValidation, "resume_only needs user_id and user_hash").
				WithDetails(map[string]any{"field": "resume_only"})
		}
		in.ResumeOnly = body.Resume
	}
	if statusAllowed && body.Status != nil {
		in.Status = engine.Status(*body.Status)
		if in.Status == "" {
			return nil, engine.Errorf(engine.CodeValidation, "status must be bot_active, agent_requested or open").
				WithDetails(map[string]any{"field": "status"})
		}
	}
	if body.Visitor != nil {
		in.Visitor = *body.Visitor
	}
	return answer(s.db.CreateConversation(c.engineCtx, c.orgID(), in, c.idem))
}

// conversationID is the path's conversation, which a visitor token may only name as its own;
// any other id answers 404 like a missing one.
func conversationID(c *call) (string, error) {
	id := c.param("id")
	if c.who.Kind == engine.KeyVisitor && id != c.who.ConversationID {
		return "", engine.Errorf(engine.CodeNotFound, "conversation not found")
	}
	return id, nil
}

func (s *server) getConversation(c *call) (any, error) {
	id, err := conversationID(c)
	if err != nil {
		return nil, err
	}
	return s.db.Conversation(c.orgID(), id)
}

func (s *server) listConversations(c *call) (any, error) {
	limit, err := queryLimit(c.ctx)
	if err != nil {
		return nil, err
	}
	args := c.ctx.QueryArgs()
	status := string(args.Peek("status"))
	listName := cursorList(c, status)
	var cursor []byte
	if raw := args.Peek("cursor"); len(raw) > 0 {
		if cursor, err = s.db.OpenCursor(listName, string(raw)); err != nil {
			return nil, err
		}
	}
	convs, next, err := s.db.ListConversations(c.orgID(), engine.Status(status), cursor, limit)
	if err != nil {
		return nil, err
	}
	page := list[engine.Conversation]{Data: convs}
	if page.Data == nil {
		page.Data = []engine.Conversation{}
	}
	if next != nil {
		sealed := s.db.SealCursor(listName, next)
		page.NextCursor = &sealed
	}
	return page, nil
}

func (s *server) patchConversation(c *call) (any, error) {
	id := c.param("id")
	if _, err := s.db.Conversation(c.orgID(), id); err != nil {
		return nil, err
	}
	// Raw values keep "absent" apart from null: {"assignee":null} unassigns, {} leaves it.
	var fields struct {
		Status   jsontext.Value `json:"status"`
		Assignee jsontext.Value `json:"assignee"`
	}
	if err := decodeJSON(c.ctx.PostBody(), &fields, false); err != nil {
		return nil, err
	}
	var patch engine.ConversationPatch
	if fields.Status != nil {
		var st string
		if err := json.Unmarshal(fields.Status, &st); err != nil {
			return nil, fieldTypeError("status", "a string")
		}
		status := engine.Status(st)
		patch.Status = &status
	}
	if fields.Assignee != nil {
		patch.SetAssignee = true
		if err := json.Unmarshal(fields.Assignee, &patch.Assignee); err != nil {
			return nil, fieldTypeError("assignee", "a string or null")
		}
	}
	return answer(s.db.UpdateConversation(c.engineCtx, c.orgID(), id, patch, c.idem))
}

// messageBody is section 6's request body.
type messageBody struct {
	Text        *string `json:"text"`
	Attachments []struct {
		URL *string `json:"url"`
	} `json:"attachments"`
}

// decodeMessageBody parses and checks a message body: bad JSON, wrong types, neither text nor
// attachments, too long or too many are validation errors. It returns the trimmed text and the
// attachment URLs.
func decodeMessageBody(raw []byte) (string, []string, error) {
	var body messageBody
	if err := decodeJSON(raw, &body, false); err != nil {
		return "", nil, err
	}
	urls := make([]string, 0, len(body.Attachments))
	for i, a := range body.Attachments {
		if a.URL == nil {
			return "", nil, engine.Errorf(engine.CodeValidation, "attachments[%d].url is required", i).
				WithDetails(map[string]any{"field": fmt.Sprintf("attachments[%d].url", i)})
		}
		urls = append(urls, *a.URL)
	}
	text := ""
	if body.Text != nil {
		text = *body.Text
	}
	text, err := engine.ValidateMessage(text, len(urls))
	return text, urls, err
}

func (s *server) postAgentMessage(c *call) (any, error) {
	return s.postMessage(c, engine.AuthorAgent)
}

func (s *server) postBotMessage(c *call) (any, error) {
	return s.postMessage(c, engine.AuthorBot)
}

func (s *server) postVisitorMessage(c *call) (any, error) {
	return s.postMessage(c, engine.AuthorVisitor)
}

// postMessage runs section 6's checks after idempotency, in order: conversation (404), body
// (400), status (400), attachments (422), then the one commit.
func (s *server) postMessage(c *call, author engine.Author) (any, error) {
	id, err := conversationID(c)
	if err != nil {
		return nil, err
	}
	text, urls, bodyErr := decodeMessageBody(c.ctx.PostBody())
	if bodyErr != nil || len(urls) > 0 {
		// Section 6 answers a missing conversation before a bad body, and the status before
		// any download: both need the conversation read now. A text-only post leaves both
		// checks to its write unit, which reads the conversation anyway and applies the same
		// rules in the same order, so the hot path reads and decodes it once.
		conv, err := s.db.Conversation(c.orgID(), id)
		if err != nil {
			return nil, err
		}
		if bodyErr != nil {
			return nil, bodyErr
		}
		if err := engine.CheckMessage(author, conv.Status); err != nil {
			return nil, err
		}
	}
	attachments, err := s.attach.Attach(c.engineCtx, c.orgID(), urls)
	if err != nil {
		return nil, err
	}
	in := engine.NewMessage{OrgID: c.orgID(), ConversationID: id, Author: author, APIKeyID: c.who.KeyID, Text: text, Attachments: attachments}
	if c.who.Kind == engine.KeyMember {
		// A dashboard reply: section 12's assignment rule, and the member as its author.
		in.APIKeyID, in.MemberID = "", c.who.MemberID
	}
	msg, body, err := s.db.PostMessage(c.engineCtx, in, c.idem)
	if err != nil {
		return nil, err
	}
	s.metrics.messagePosted(msg.Metadata.Source)
	return encodedReply(body), nil
}

func (s *server) requestAgent(c *call) (any, error) {
	id, err := conversationID(c)
	if err != nil {
		return nil, err
	}
	return answer(s.db.RequestAgent(c.engineCtx, c.orgID(), id, c.idem))
}

// cursorList names the list a cursor pages through: the org, the route's path (which holds the
// conversation of a message list) and the filter, so a cursor of one list is refused on another.
func cursorList(c *call, filter string) string {
	return c.orgID() + "\x00" + string(c.ctx.Path()) + "\x00" + filter
}

// afterParam reads a "resume after this position" parameter: the sealed cursor of a previous
// page, or else ?after=N, the plain position the contract lets a client resume from.
func (s *server) afterParam(c *call, name string) (uint64, error) {
	args := c.ctx.QueryArgs()
	if raw := args.Peek("cursor"); len(raw) > 0 {
		position, err := s.db.OpenCursor(cursorList(c, ""), string(raw))
		if err != nil {
			return 0, err
		}
		if len(position) != 8 {
			return 0, engine.Errorf(engine.CodeValidation, "cursor is not one this list gave out").WithDetails(map[string]any{"field": "cursor"})
		}
		return binary.BigEndian.Uint64(position), nil
	}
	raw := args.Peek(name)
	if len(raw) == 0 {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(raw), 10, 63)
	if err != nil {
		return 0, engine.Errorf(engine.CodeValidation, "%s must be a whole number of at least 0", name).WithDetails(map[string]any{"field": name})
	}
	return n, nil
}

// sealPosition returns the cursor of c's list that resumes after position.
func (s *server) sealPosition(c *call) func(position uint64) string {
	listName := cursorList(c, "")
	return func(position uint64) string {
		return s.db.SealCursor(listName, binary.BigEndian.AppendUint64(nil, position))
	}
}

func (s *server) listMessages(c *call) (any, error) {
	id, err := conversationID(c)
	if err != nil {
		return nil, err
	}
	limit, err := queryLimit(c.ctx)
	if err != nil {
		return nil, err
	}
	after, err := s.afterParam(c, "after")
	if err != nil {
		return nil, err
	}
	msgs, more, err := s.db.ListMessages(c.orgID(), id, after, limit)
	if err != nil {
		return nil, err
	}
	return positionPage(msgs, more, func(m engine.Message) uint64 { return m.Seq }, s.sealPosition(c)), nil
}

func (s *server) listEvents(c *call) (any, error) {
	limit, err := queryLimit(c.ctx)
	if err != nil {
		return nil, err
	}
	after, err := s.afterParam(c, "after")
	if err != nil {
		return nil, err
	}
	events, more, err := s.db.ListEvents(c.orgID(), after, limit)
	if err != nil {
		return nil, err
	}
	return positionPage(events, more, func(e engine.Event) uint64 { return e.Offset }, s.sealPosition(c)), nil
}

// positionPage is a page of a list ordered by a position (seq, offset); its cursor seals the last
// item's position, which is also what ?after= takes in the clear.
func positionPage[T any](items []T, more bool, position func(T) uint64, seal func(uint64) string) list[T] {
	page := list[T]{Data: items}
	if more {
		next := seal(position(items[len(items)-1]))
		page.NextCursor = &next
	}
	return page
}

// decodeJSON decodes one JSON object into v, the one decoder of every request body. It is strict
// where readers could disagree (section 3): invalid UTF-8, a lone surrogate escape, a member name
// given twice, or a name that matches one of v's fields only when case is ignored ("TEXT") are
// validation errors, so what is stored is exactly what any JSON reader sees in the body. Unknown
// fields are ignored. An empty body is an empty object when emptyOK (endpoints whose every field
// is optional).
func decodeJSON(raw []byte, v any, emptyOK bool) error {
	if len(raw) == 0 && emptyOK {
		return nil
	}
	trimmed := trimSpace(raw)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return engine.Errorf(engine.CodeValidation, "the body must be a JSON object")
	}
	// json/v2's defaults are the strict rules above, except the case check, which it has no
	// option for: with case-insensitive matching off, "TEXT" would be silently ignored.
	if err := json.Unmarshal(trimmed, v); err != nil {
		return decodeError(err)
	}
	path, err := findMiscasedName(trimmed, reflect.TypeOf(v))
	if err != nil {
		return decodeError(err)
	}
	if path != "" {
		return engine.Errorf(engine.CodeValidation, "%s is not a field of this body; field names are case-sensitive", path).
			WithDetails(map[string]any{"field": path})
	}
	return nil
}

// decodeError words a json/v2 error in the contract's envelope, naming the field at fault.
func decodeError(err error) error {
	var semErr *json.SemanticError
	if errors.As(err, &semErr) && semErr.JSONPointer != "" {
		field := fieldPath(semErr.JSONPointer)
		return engine.Errorf(engine.CodeValidation, "%s has the wrong type (got %s)", field, jsonKindName(semErr.JSONKind)).
			WithDetails(map[string]any{"field": field})
	}
	var synErr *jsontext.SyntacticError
	if errors.As(err, &synErr) && synErr.JSONPointer != "" {
		field := fieldPath(synErr.JSONPointer)
		if errors.Is(synErr.Err, jsontext.ErrDuplicateName) {
			return engine.Errorf(engine.CodeValidation, "%s appears more than once in the body", field).
				WithDetails(map[string]any{"field": field})
		}
		return engine.Errorf(engine.CodeValidation, "the body is not valid JSON: %s", err.Error()).
			WithDetails(map[string]any{"field": field})
	}
	return engine.Errorf(engine.CodeValidation, "the body is not valid JSON: %s", err.Error())
}

// fieldPath renders a JSON pointer as the contract names fields: /attachments/0/url is
// attachments[0].url.
func fieldPath(ptr jsontext.Pointer) string {
	var b strings.Builder
	for tok := range ptr.Tokens() {
		if _, err := strconv.ParseUint(tok, 10, 64); err == nil {
			b.WriteString("[" + tok + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	return b.String()
}

func jsonKindName(k jsontext.Kind) string {
	switch k {
	case '"':
		return "a string"
	case '0':
		return "a number"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	case '{':
		return "an object"
	case '[':
		return "an array"
	}
	return "another kind of value"
}

// nameScanner is a reusable decoder for findMiscasedName: every body is scanned a second time,
// and a fresh decoder per request was several allocations and a read buffer each.
type nameScanner struct {
	r   bytes.Reader
	dec *jsontext.Decoder
}

var nameScanners = sync.Pool{New: func() any {
	s := &nameScanner{}
	s.dec = jsontext.NewDecoder(&s.r)
	return s
}}

// maxPooledScan bounds the bodies scanned with a pooled decoder, whose read buffer grows to the
// body's size and stays that large while pooled.
const maxPooledScan = 64 << 10

// findMiscasedName is miscasedName over raw, the body that decoded into t.
func findMiscasedName(raw []byte, t reflect.Type) (string, error) {
	if len(raw) > maxPooledScan {
		return miscasedName(jsontext.NewDecoder(bytes.NewReader(raw)), t, "")
	}
	s := nameScanners.Get().(*nameScanner)
	s.r.Reset(raw)
	s.dec.Reset(&s.r)
	path, err := miscasedName(s.dec, t, "")
	// Drop the body (fasthttp reuses its buffer) before the scanner waits in the pool.
	s.r.Reset(nil)
	s.dec.Reset(&s.r)
	nameScanners.Put(s)
	return path, err
}

// miscasedName walks a value that decoded into t and returns the path of the first member name
// that is not one of t's field names but equals one when case is ignored ("" when there is none).
func miscasedName(dec *jsontext.Decoder, t reflect.Type, path string) (string, error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case dec.PeekKind() == '{' && t.Kind() == reflect.Struct:
		if _, err := dec.ReadToken(); err != nil {
			return "", err
		}
		fields := jsonFields(t)
		for dec.PeekKind() != '}' {
			tok, err := dec.ReadToken()
			if err != nil {
				return "", err
			}
			name := tok.String()
			member := name
			if path != "" {
				member = path + "." + name
			}
			if ft, ok := fields[name]; ok {
				if found, err := miscasedName(dec, ft, member); found != "" || err != nil {
					return found, err
				}
				continue
			}
			for known := range fields {
				if strings.EqualFold(known, name) {
					return member, nil
				}
			}
			if err := dec.SkipValue(); err != nil {
				return "", err
			}
		}
		_, err := dec.ReadToken()
		return "", err
	case dec.PeekKind() == '[' && t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		if _, err := dec.ReadToken(); err != nil {
			return "", err
		}
		for i := 0; dec.PeekKind() != ']'; i++ {
			if found, err := miscasedName(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); found != "" || err != nil {
				return found, err
			}
		}
		_, err := dec.ReadToken()
		return "", err
	}
	return "", dec.SkipValue()
}

// fieldsByType caches each body struct's JSON field names and types.
var fieldsByType sync.Map // reflect.Type → map[string]reflect.Type

func jsonFields(t reflect.Type) map[string]reflect.Type {
	if cached, ok := fieldsByType.Load(t); ok {
		return cached.(map[string]reflect.Type)
	}
	fields := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	fieldsByType.Store(t, fields)
	return fields
}

func fieldTypeError(field, want string) error {
	return engine.Errorf(engine.CodeValidation, "%s must be %s", field, want).WithDetails(map[string]any{"field": field})
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
