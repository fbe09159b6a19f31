package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/awardee/awardee/engine"
)

// contractTransitions is section 4's table written out again from API.md, independently of the
// engine's copy, so a typo in either shows up as a failing cell.
var contractTransitions = map[engine.Status]map[engine.Status]bool{
	engine.StatusBotActive:      {engine.StatusAgentRequested: true, engine.StatusOpen: true, engine.StatusResolved: true, engine.StatusClosed: true},
	engine.StatusAgentRequested: {engine.StatusBotActive: true, engine.StatusOpen: true, engine.StatusResolved: true, engine.StatusClosed: true},
	engine.StatusOpen:           {engine.StatusBotActive: true, engine.StatusAgentRequested: true, engine.StatusResolved: true, engine.StatusClosed: true},
	engine.StatusResolved:       {engine.StatusOpen: true, engine.StatusClosed: true, engine.StatusArchived: true},
	engine.StatusClosed:         {engine.StatusOpen: true, engine.StatusArchived: true},
	engine.StatusArchived:       {engine.StatusOpen: true},
}

// apiError is the contract's error envelope, decoded.
type apiError struct {
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details"`
}

// mustAPIError checks r's status and error code and returns the decoded envelope.
func mustAPIError(t testing.TB, r resp, status int, code string) apiError {
	t.Helper()
	var env struct {
		Error *apiError `json:"error"`
	}
	if err := json.Unmarshal(r.Body, &env); err != nil || env.Error == nil {
		t.Fatalf("status %d, body is not an error envelope: %s", r.Status, r.Body)
	}
	if r.Status != status || env.Error.Code != code {
		t.Fatalf("got %d %s, want %d %s: %s", r.Status, env.Error.Code, status, code, r.Body)
	}
	if env.Error.Message == "" {
		t.Fatalf("error without a message: %s", r.Body)
	}
	return *env.Error
}

// fetchConversation reads a conversation through the team API.
func fetchConversation(t testing.TB, ts *testServer, apiKey, id string) engine.Conversation {
	t.Helper()
	r := mustStatus(t, ts.do(t, "GET", "/conversations/"+id, apiKey, nil), 200)
	var c engine.Conversation
	if err := json.Unmarshal(r.Body, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// decodeMessage decodes a message body, failing the test on anything else.
func decodeMessage(t testing.TB, r resp) engine.Message {
	t.Helper()
	var m engine.Message
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("not a message: %v: %s", err, r.Body)
	}
	return m
}

// decodeConversation decodes a bare conversation body.
func decodeConversation(t testing.TB, r resp) engine.Conversation {
	t.Helper()
	var c engine.Conversation
	if err := json.Unmarshal(r.Body, &c); err != nil {
		t.Fatalf("not a conversation: %v: %s", err, r.Body)
	}
	return c
}

// eventData decodes the data of an event that must be of type typ.
func eventData[T any](t testing.TB, ev engine.Event, typ string) T {
	t.Helper()
	if ev.Type != typ {
		t.Fatalf("event %d is %s, want %s", ev.Offset, ev.Type, typ)
	}
	var d T
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// convUpdate decodes a conversation.updated event's data.
func convUpdate(t testing.TB, ev engine.Event) engine.ConversationUpdatedData {
	t.Helper()
	return eventData[engine.ConversationUpdatedData](t, ev, engine.EventConversationUpdated)
}

// msgCreated decodes a message.created event's data.
func msgCreated(t testing.TB, ev engine.Event) engine.MessageCreatedData {
	t.Helper()
	return eventData[engine.MessageCreatedData](t, ev, engine.EventMessageCreated)
}

// mustStatusChange checks that ev is a conversation.updated of conversation id from → to.
func mustStatusChange(t testing.TB, ev engine.Event, id string, from, to engine.Status) {
	t.Helper()
	d := convUpdate(t, ev)
	ch, ok := d.Changes["status"]
	if d.Conversation.ID != id || d.Conversation.Status != to || !ok || ch.From != string(from) || ch.To != string(to) {
		t.Fatalf("event %d: %s, want %s status %s → %s", ev.Offset, ev.Data, id, from, to)
	}
}

// storedState is everything the API shows of one conversation, to prove a refused request left
// nothing behind.
type storedState struct {
	Conversation engine.Conversation
	Messages     []engine.Message
	Events       []engine.Event
}

func captureState(t testing.TB, ts *testServer, apiKey, id string) storedState {
	t.Helper()
	return storedState{
		Conversation: fetchConversation(t, ts, apiKey, id),
		Messages:     ts.messages(t, apiKey, id),
		Events:       ts.events(t, apiKey),
	}
}

// mustBeUnchanged fails unless the conversation, its messages and the org's events are as before.
func mustBeUnchanged(t testing.TB, ts *testServer, apiKey, id string, before storedState) {
	t.Helper()
	after := captureState(t, ts, apiKey, id)
	a, _ := json.Marshal(before)
	b, _ := json.Marshal(after)
	if !bytes.Equal(a, b) {
		t.Fatalf("a refused request changed state:\nbefore %s\nafter  %s", a, b)
	}
}

// conversationWithToken opens a conversation through the team API, keeps its visitor token and
// moves it to status through allowed PATCHes.
func conversationWithToken(t testing.TB, ts *testServer, apiKey string, status engine.Status) (string, string) {
	t.Helper()
	start, rest := status, []engine.Status(nil)
	switch status {
	case engine.StatusResolved:
		start, rest = engine.StatusOpen, []engine.Status{engine.StatusResolved}
	case engine.StatusClosed:
		start, rest = engine.StatusOpen, []engine.Status{engine.StatusClosed}
	case engine.StatusArchived:
		start, rest = engine.StatusOpen, []engine.Status{engine.StatusClosed, engine.StatusArchived}
	}
	id, vt := ts.newConversation(t, apiKey, start)
	for _, s := range rest {
		mustStatus(t, ts.do(t, "PATCH", "/conversations/"+id, apiKey, map[string]any{"status": string(s)}), 200)
	}
	return id, vt
}

// TestPatchStatusTable walks every cell of section 4's table with a real PATCH.
func TestPatchStatusTable(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	for _, from := range engine.Statuses {
		for _, to := range engine.Statuses {
			t.Run(fmt.Sprintf("%s_to_%s", from, to), func(t *testing.T) {
				t.Parallel()
				org := ts.newOrg(t, 0, 0)
				id := ts.conversationIn(t, org.APIKey, from)
				before := captureState(t, ts, org.APIKey, id)
				r := ts.do(t, "PATCH", "/conversations/"+id, org.APIKey, map[string]any{"status": string(to)})
				switch {
				case from == to:
					mustStatus(t, r, 200)
					if c := decodeConversation(t, r); c.Status != from {
						t.Fatalf("no-op PATCH answered status %s", c.Status)
					}
					mustBeUnchanged(t, ts, org.APIKey, id, before)
				case contractTransitions[from][to]:
					mustStatus(t, r, 200)
					if c := decodeConversation(t, r); c.ID != id || c.Status != to {
						t.Fatalf("answered %s in %s, want %s in %s", c.ID, c.Status, id, to)
					}
					if got := fetchConversation(t, ts, org.APIKey, id).Status; got != to {
						t.Fatalf("stored status %s, want %s", got, to)
					}
					evs := ts.events(t, org.APIKey)
					if len(evs) != len(before.Events)+1 {
						t.Fatalf("%d new events, want 1", len(evs)-len(before.Events))
					}
					mustStatusChange(t, evs[len(evs)-1], id, from, to)
				default:
					e := mustAPIError(t, r, 400, engine.CodeInvalidState)
					if e.Details["from"] != string(from) || e.Details["to"] != string(to) {
						t.Fatalf("details %v, want from %s to %s", e.Details, from, to)
					}
					mustBeUnchanged(t, ts, org.APIKey, id, before)
				}
			})
		}
	}
}

// TestAgentMessageByStatus is section 6's table for POST /conversations/{id}/messages.
func TestAgentMessageByStatus(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	for _, status := range engine.Statuses {
		t.Run(string(status), func(t *testing.T) {
			t.Parallel()
			org := ts.newOrg(t, 0, 0)
			id := ts.conversationIn(t, org.APIKey, status)
			before := captureState(t, ts, org.APIKey, id)
			r := ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, map[string]any{"text": " reply "})
			if status != engine.StatusOpen && status != engine.StatusAgentRequested {
				e := mustAPIError(t, r, 400, engine.CodeInvalidState)
				if e.Details["status"] != string(status) {
					t.Fatalf("details %v, want status %s", e.Details, status)
				}
				mustBeUnchanged(t, ts, org.APIKey, id, before)
				return
			}
			mustStatus(t, r, 201)
			reply := decodeMessage(t, r)
			if reply.Role != engine.RoleAssistant || reply.Text != "reply" || reply.Metadata.Source != "api" ||
				!engine.ValidID(engine.PrefixKey, reply.Metadata.APIKeyID) || reply.ConversationID != id ||
				!engine.ValidID(engine.PrefixMessage, reply.ID) {
				t.Fatalf("reply %s", r.Body)
			}
			conv := fetchConversation(t, ts, org.APIKey, id)
			if conv.Status != engine.StatusOpen || conv.Assignee != nil {
				t.Fatalf("after the reply: status %s assignee %v, want open and unassigned", conv.Status, conv.Assignee)
			}
			msgs := ts.messages(t, org.APIKey, id)[len(before.Messages):]
			evs := ts.events(t, org.APIKey)[len(before.Events):]
			if status == engine.StatusOpen {
				if len(msgs) != 1 || msgs[0].ID != reply.ID || reply.Seq != 1 {
					t.Fatalf("messages %+v, want only the reply at seq 1", msgs)
				}
				if len(evs) != 1 || msgCreated(t, evs[0]).Message.ID != reply.ID {
					t.Fatalf("events %+v, want one message.created for the reply", evs)
				}
				return
			}
			// Takeover: the status change, the marker, then the reply, in that order.
			if len(msgs) != 2 {
				t.Fatalf("%d messages, want marker and reply", len(msgs))
			}
			marker := msgs[0]
			if marker.Seq != 1 || marker.Role != engine.RoleSystem || marker.Text != engine.AgentJoinedText ||
				marker.Metadata.Source != "system" || marker.Metadata.Event != "agent_joined" || marker.Metadata.APIKeyID != "" {
				t.Fatalf("marker %+v", marker)
			}
			if msgs[1].ID != reply.ID || reply.Seq != 2 {
				t.Fatalf("reply at seq %d (%s), want seq 2 after the marker", reply.Seq, msgs[1].ID)
			}
			if len(evs) != 3 {
				t.Fatalf("%d events, want 3", len(evs))
			}
			mustStatusChange(t, evs[0], id, engine.StatusAgentRequested, engine.StatusOpen)
			if d := msgCreated(t, evs[1]); d.Message.ID != marker.ID {
				t.Fatalf("second event is for %s, want the marker", d.Message.ID)
			}
			if d := msgCreated(t, evs[2]); d.Message.ID != reply.ID || d.Conversation.Status != engine.StatusOpen {
				t.Fatalf("third event %s, want the reply in an open conversation", evs[2].Data)
			}
			for i := 1; i < len(evs); i++ {
				if evs[i].Offset != evs[i-1].Offset+1 {
					t.Fatalf("offsets %d then %d", evs[i-1].Offset, evs[i].Offset)
				}
			}
		})
	}
}

// TestBotMessageByStatus: bot-messages post only in bot_active and never move the status.
func TestBotMessageByStatus(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	for _, status := range engine.Statuses {
		t.Run(string(status), func(t *testing.T) {
			t.Parallel()
			org := ts.newOrg(t, 0, 0)
			id := ts.conversationIn(t, org.APIKey, status)
			before := captureState(t, ts, org.APIKey, id)
			r := ts.do(t, "POST", "/conversations/"+id+"/bot-messages", org.APIKey, map[string]any{"text": "beep"})
			if status != engine.StatusBotActive {
				mustAPIError(t, r, 400, engine.CodeInvalidState)
				mustBeUnchanged(t, ts, org.APIKey, id, before)
				return
			}
			mustStatus(t, r, 201)
			m := decodeMessage(t, r)
			if m.Role != engine.RoleAssistant || m.Metadata.Source != "bot" || m.Text != "beep" || m.Seq != 1 {
				t.Fatalf("bot message %s", r.Body)
			}
			if got := fetchConversation(t, ts, org.APIKey, id).Status; got != engine.StatusBotActive {
				t.Fatalf("status %s after a bot message, want bot_active", got)
			}
			evs := ts.events(t, org.APIKey)[len(before.Events):]
			if len(evs) != 1 || msgCreated(t, evs[0]).Message.ID != m.ID {
				t.Fatalf("events %+v, want one message.created", evs)
			}
		})
	}
}

func TestPatchAssignee(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	alice := ts.newMember(t, org.OrgID, "alice@example.com", engine.RoleAgent).Member.ID
	steps := []struct {
		name     string
		body     string
		want     *string
		changeTo any // nil: no event expected
		from     any
	}{
		{"assign", `{"assignee":"` + alice + `"}`, &alice, alice, nil},
		{"same assignee is a no-op", `{"assignee":" ` + alice + ` "}`, &alice, nil, nil},
		{"unassign", `{"assignee":null}`, nil, "<null>", alice},
		{"unassign again is a no-op", `{"assignee":null}`, nil, nil, nil},
	}
	for _, st := range steps {
		before := ts.events(t, org.APIKey)
		c := decodeConversation(t, mustStatus(t, ts.do(t, "PATCH", "/conversations/"+id, org.APIKey, st.body), 200))
		if !sameString(c.Assignee, st.want) || c.Status != engine.StatusOpen {
			t.Fatalf("%s: assignee %v status %s", st.name, c.Assignee, c.Status)
		}
		evs := ts.events(t, org.APIKey)[len(before):]
		if st.changeTo == nil {
			if len(evs) != 0 {
				t.Fatalf("%s: %d events, want none", st.name, len(evs))
			}
			continue
		}
		if len(evs) != 1 {
			t.Fatalf("%s: %d events, want 1", st.name, len(evs))
		}
		d := convUpdate(t, evs[0])
		ch, ok := d.Changes["assignee"]
		if _, moved := d.Changes["status"]; moved || !ok {
			t.Fatalf("%s: changes %v, want only assignee", st.name, d.Changes)
		}
		wantTo := st.changeTo
		if wantTo == "<null>" {
			wantTo = nil
		}
		if ch.From != st.from || ch.To != wantTo || !sameString(d.Conversation.Assignee, st.want) {
			t.Fatalf("%s: change %v → %v, want %v → %v", st.name, ch.From, ch.To, st.from, wantTo)
		}
	}
}

// TestRefusedPatchChangesNothing: a PATCH whose status move is refused leaves its other fields
// alone too; the PATCH is one unit.
func TestRefusedPatchChangesNothing(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusBotActive)
	bob := ts.newMember(t, org.OrgID, "bob@example.com", engine.RoleAgent).Member.ID
	before := captureState(t, ts, org.APIKey, id)
	e := mustAPIError(t, ts.do(t, "PATCH", "/conversations/"+id, org.APIKey, `{"assignee":"`+bob+`","status":"archived"}`), 400, engine.CodeInvalidState)
	if e.Details["from"] != "bot_active" || e.Details["to"] != "archived" {
		t.Fatalf("details %v", e.Details)
	}
	mustBeUnchanged(t, ts, org.APIKey, id, before)
}

func sameString(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func TestPatchRejectsBadFields(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	cases := []struct {
		name, body, field string
	}{
		{"unknown status", `{"status":"pending"}`, "status"},
		{"empty status", `{"status":""}`, "status"},
		{"status of wrong case", `{"status":"OPEN"}`, "status"},
		{"status not a string", `{"status":5}`, "status"},
		{"assignee not a string", `{"assignee":7}`, "assignee"},
		{"blank assignee", `{"assignee":"   "}`, "assignee"},
		{"valid status with a bad assignee", `{"status":"resolved","assignee":""}`, "assignee"},
		{"not an object", `["open"]`, ""},
		{"bad JSON", `{"status":`, ""},
		{"empty body", ``, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := captureState(t, ts, org.APIKey, id)
			e := mustAPIError(t, ts.do(t, "PATCH", "/conversations/"+id, org.APIKey, tc.body), 400, engine.CodeValidation)
			if tc.field != "" && e.Details["field"] != tc.field {
				t.Fatalf("details %v, want field %s", e.Details, tc.field)
			}
			mustBeUnchanged(t, ts, org.APIKey, id, before)
		})
	}
}
