package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/awardee/awardee/internal/testkit"
)

// Section 6's takeover: one transaction writes the status change, the system marker and the
// reply, and their events get consecutive offsets in exactly that order, both in the log and in
// what subscribers (realtime, webhooks) receive.
func TestTakeoverWritesInOrder(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusAgentRequested)
	sink := newEventSink(db)
	before := latestOffset(t, db, org.OrgID)

	reply, _, err := db.PostMessage(context.Background(), NewMessage{
		OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, APIKeyID: "key_takeover", Text: "  Hi, I am here.  ",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}

	events := eventsAfter(t, db, org.OrgID, before)
	wantTypes := []string{EventConversationUpdated, EventMessageCreated, EventMessageCreated}
	if len(events) != len(wantTypes) {
		t.Fatalf("%d events, want %d", len(events), len(wantTypes))
	}
	for i, ev := range events {
		if ev.Type != wantTypes[i] || ev.Offset != before+uint64(i)+1 {
			t.Errorf("event %d = %s@%d, want %s@%d", i, ev.Type, ev.Offset, wantTypes[i], before+uint64(i)+1)
		}
		if ev.ConversationID != conv.ID {
			t.Errorf("event %d routed to conversation %q, want %s", i, ev.ConversationID, conv.ID)
		}
	}

	if from, to := statusChange(t, events[0]); from != string(StatusAgentRequested) || to != string(StatusOpen) {
		t.Errorf("changes.status = {%s, %s}, want {agent_requested, open}", from, to)
	}
	var changes struct {
		Changes map[string]json.RawMessage `json:"changes"`
	}
	if err := json.Unmarshal(events[0].Data, &changes); err != nil || len(changes.Changes) != 1 {
		t.Errorf("takeover changes = %v (%v), want only status: the conversation stays unassigned", changes.Changes, err)
	}

	marker := decodeData[MessageCreatedData](t, events[1]).Message
	if marker.Role != RoleSystem || marker.Text != AgentJoinedText || marker.Seq != 1 ||
		marker.Metadata != (MessageMetadata{Source: "system", Event: "agent_joined"}) {
		t.Errorf("marker = %+v, want the system agent_joined message with seq 1", marker)
	}
	second := decodeData[MessageCreatedData](t, events[2])
	if second.Message.ID != reply.ID || second.Message.Seq != 2 || second.Conversation.Status != StatusOpen {
		t.Errorf("third event = message %s seq %d in %s, want the reply %s seq 2 in open", second.Message.ID, second.Message.Seq, second.Conversation.Status, reply.ID)
	}
	if reply.Role != RoleAssistant || reply.Text != "Hi, I am here." || reply.Metadata != (MessageMetadata{Source: "api", APIKeyID: "key_takeover"}) {
		t.Errorf("reply = %+v, want a trimmed assistant message from the api key", reply)
	}

	// Subscribers got the same three events in the same order before PostMessage returned.
	published := sink.snapshot()
	if len(published) != len(events) {
		t.Fatalf("%d events published, want %d", len(published), len(events))
	}
	for i := range events {
		if published[i].ID != events[i].ID {
			t.Errorf("published event %d = %s, logged %s", i, published[i].ID, events[i].ID)
		}
	}

	got, err := db.Conversation(org.OrgID, conv.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusOpen || got.Assignee != nil {
		t.Errorf("conversation is %s assigned to %v, want open and unassigned", got.Status, got.Assignee)
	}
	thread := allMessages(t, db, org.OrgID, conv.ID)
	if len(thread) != 2 || thread[0].ID != marker.ID || thread[1].ID != reply.ID {
		t.Errorf("thread = %v, want [marker, reply]", thread)
	}
}

// 32 agents reply at once to a conversation that asks for one. The status rule is re-applied
// inside each unit, so exactly one of them takes over: one marker (seq 1), one status change, and
// every reply posted with a distinct seq, 1..33 with no gap.
func TestConcurrentTakeoverWritesOneMarker(t *testing.T) {
	const agents = 32
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusAgentRequested)
	before := latestOffset(t, db, org.OrgID)

	gate := make(chan struct{})
	var wg sync.WaitGroup
	replies := make([]Message, agents)
	for i := range agents {
		wg.Go(func() {
			<-gate
			m, _, err := db.PostMessage(context.Background(), NewMessage{
				OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, APIKeyID: "key_a", Text: fmt.Sprintf("reply %d", i),
			}, nil)
			if err != nil {
				t.Errorf("agent %d: %v", i, err)
			}
			replies[i] = m
		})
	}
	close(gate)
	testkit.WaitAll(t, "all agents", &wg)

	thread := allMessages(t, db, org.OrgID, conv.ID)
	if len(thread) != agents+1 {
		t.Fatalf("thread has %d messages, want %d", len(thread), agents+1)
	}
	markers := 0
	for i, m := range thread {
		if m.Seq != uint64(i+1) {
			t.Errorf("message %d has seq %d, want %d", i, m.Seq, i+1)
		}
		if m.Role == RoleSystem {
			markers++
			if m.Seq != 1 {
				t.Errorf("marker has seq %d, want 1: it must precede every reply", m.Seq)
			}
		}
	}
	if markers != 1 {
		t.Errorf("%d takeover markers, want exactly 1", markers)
	}
	seen := map[uint64]bool{}
	for i, m := range replies {
		if m.Seq < 2 || m.Seq > agents+1 || seen[m.Seq] {
			t.Errorf("agent %d got seq %d: out of 2..%d or a duplicate", i, m.Seq, agents+1)
		}
		seen[m.Seq] = true
	}

	updates := 0
	for _, ev := range eventsAfter(t, db, org.OrgID, before) {
		if ev.Type == EventConversationUpdated {
			updates++
		}
	}
	if updates != 1 {
		t.Errorf("%d conversation.updated events, want 1", updates)
	}
	got, err := db.Conversation(org.OrgID, conv.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusOpen || got.Assignee != nil {
		t.Errorf("conversation is %s assigned to %v, want open and unassigned", got.Status, got.Assignee)
	}
}

// Every (author, status) pair through PostMessage itself, whose unit re-applies the rule to the
// status it reads: an allowed post writes its status change, marker and message with their
// events; a refused one is invalid_state and writes nothing at all.
func TestPostMessageFollowsAuthorRules(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	wantRole := map[Author]Role{AuthorAgent: RoleAssistant, AuthorBot: RoleAssistant, AuthorVisitor: RoleUser}
	wantSource := map[Author]string{AuthorAgent: "api", AuthorBot: "bot", AuthorVisitor: "widget"}
	for _, r := range messageRules {
		t.Run(fmt.Sprintf("%s_in_%s", r.author, r.status), func(t *testing.T) {
			conv := newConv(t, db, org.OrgID, r.status)
			before := latestOffset(t, db, org.OrgID)

			m, _, err := db.PostMessage(context.Background(), NewMessage{
				OrgID: org.OrgID, ConversationID: conv.ID, Author: r.author, APIKeyID: "key_r", Text: "hello",
			}, nil)

			events := eventsAfter(t, db, org.OrgID, before)
			thread := allMessages(t, db, org.OrgID, conv.ID)
			stored, cerr := db.Conversation(org.OrgID, conv.ID)
			if cerr != nil {
				t.Fatal(cerr)
			}
			if stored.Status != r.after {
				t.Errorf("status after the post = %s, want %s", stored.Status, r.after)
			}
			if !r.allowed {
				e := wantCode(t, err, CodeInvalidState)
				wantDetails(t, e, map[string]any{"status": string(r.status)})
				if len(events) != 0 || len(thread) != 0 {
					t.Errorf("refused post wrote %d events and %d messages", len(events), len(thread))
				}
				return
			}
			if err != nil {
				t.Fatalf("allowed post refused: %v", err)
			}
			if m.Role != wantRole[r.author] || m.Metadata.Source != wantSource[r.author] {
				t.Errorf("message role %s source %s, want %s %s", m.Role, m.Metadata.Source, wantRole[r.author], wantSource[r.author])
			}
			var wantTypes []string
			if r.after != r.status {
				wantTypes = append(wantTypes, EventConversationUpdated)
			}
			wantMsgs := 1
			if r.takeover {
				wantTypes = append(wantTypes, EventMessageCreated)
				wantMsgs++
			}
			wantTypes = append(wantTypes, EventMessageCreated)
			var gotTypes []string
			for _, ev := range events {
				gotTypes = append(gotTypes, ev.Type)
			}
			if strings.Join(gotTypes, ",") != strings.Join(wantTypes, ",") {
				t.Errorf("events = %v, want %v", gotTypes, wantTypes)
			}
			if r.after != r.status {
				if from, to := statusChange(t, events[0]); from != string(r.status) || to != string(r.after) {
					t.Errorf("changes.status = {%s, %s}, want {%s, %s}", from, to, r.status, r.after)
				}
			}
			if len(thread) != wantMsgs || thread[len(thread)-1].ID != m.ID {
				t.Errorf("thread has %d messages ending in %v, want %d ending in the post", len(thread), thread, wantMsgs)
			}
		})
	}
}

// Section 6's body limits. Lengths count code points after trimming, so multi-byte text at the
// limit passes even though its byte length is far beyond it.
func TestValidateMessage(t *testing.T) {
	cases := []struct {
		name        string
		text        string
		attachments int
		want        string // the stored text; ignored when wantErr
		wantErr     bool
	}{
		{"trims", " \t hello \n", 0, "hello", false},
		{"inner space kept", "a  b", 0, "a  b", false},
		{"ascii at limit", strings.Repeat("a", MaxTextLength), 0, strings.Repeat("a", MaxTextLength), false},
		{"2-byte runes at limit", strings.Repeat("é", MaxTextLength), 0, strings.Repeat("é", MaxTextLength), false},
		{"4-byte runes at limit", strings.Repeat("😀", MaxTextLength), 0, strings.Repeat("😀", MaxTextLength), false},
		{"limit counted after trimming", "  " + strings.Repeat("日", MaxTextLength) + "\n\n", 0, strings.Repeat("日", MaxTextLength), false},
		{"one rune over", strings.Repeat("é", MaxTextLength+1), 0, "", true},
		{"ascii one over", strings.Repeat("a", MaxTextLength+1), 0, "", true},
		{"empty", "", 0, "", true},
		{"only white space", " \n\t ", 0, "", true},
		{"attachment without text", "", 1, "", false},
		{"white space with attachment", "  ", 1, "", false},
		{"max attachments", "x", MaxAttachments, "x", false},
		{"too many attachments", "x", MaxAttachments + 1, "", true},
		{"too many attachments, no text", "", 11, "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ValidateMessage(c.text, c.attachments)
			if c.wantErr {
				wantCode(t, err, CodeValidation)
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if got != c.want {
				t.Errorf("stored text is %d runes %q…, want %d runes", len([]rune(got)), firstRunes(got, 10), len([]rune(c.want)))
			}
		})
	}
}

func firstRunes(s string, n int) string {
	r := []rune(s)
	return string(r[:min(n, len(r))])
}

// PostMessage validates before it commits: a body that breaks the limits writes nothing.
func TestPostMessageInvalidBodyWritesNothing(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	before := latestOffset(t, db, org.OrgID)
	for _, in := range []NewMessage{
		{Text: strings.Repeat("é", MaxTextLength+1)},
		{Text: "   "},
		{Text: "x", Attachments: make([]Attachment, MaxAttachments+1)},
	} {
		in.OrgID, in.ConversationID, in.Author = org.OrgID, conv.ID, AuthorAgent
		_, _, err := db.PostMessage(context.Background(), in, nil)
		wantCode(t, err, CodeValidation)
	}
	if n := len(eventsAfter(t, db, org.OrgID, before)); n != 0 {
		t.Errorf("invalid posts appended %d events", n)
	}
	if n := len(allMessages(t, db, org.OrgID, conv.ID)); n != 0 {
		t.Errorf("invalid posts stored %d messages", n)
	}
}

// A conversation id that no conversation can have, bytes that are not UTF-8 included, is a
// conversation that does not exist, whatever the post's draft could or could not encode.
func TestPostMessageToAnImpossibleIDIsNotFound(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	before := latestOffset(t, db, org.OrgID)
	for _, id := range []string{"\x8f", "conv_\xff\xfe", "", "msg_1"} {
		_, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: id, Author: AuthorAgent, Text: "hi"}, nil)
		wantCode(t, err, CodeNotFound)
	}
	if n := len(eventsAfter(t, db, org.OrgID, before)); n != 0 {
		t.Errorf("posts to no conversation appended %d events", n)
	}
}

// ListMessages pages oldest first with after/limit; more is true only when a message follows
// the page, including when the rest fits the limit exactly.
func TestListMessagesPaging(t *testing.T) {
	const total = 7
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	for i := range total {
		postAgent(t, db, org.OrgID, conv.ID, fmt.Sprintf("m%d", i+1))
	}
	other := newConv(t, db, org.OrgID, StatusOpen)
	postAgent(t, db, org.OrgID, other.ID, "elsewhere") // must never leak into conv's pages

	cases := []struct {
		after    uint64
		limit    int
		wantSeqs []uint64
		wantMore bool
	}{
		{0, 3, []uint64{1, 2, 3}, true},
		{3, 3, []uint64{4, 5, 6}, true},
		{6, 3, []uint64{7}, false},
		{4, 3, []uint64{5, 6, 7}, false},
		{0, total, []uint64{1, 2, 3, 4, 5, 6, 7}, false},
		{0, 100, []uint64{1, 2, 3, 4, 5, 6, 7}, false},
		{7, 3, nil, false},
		{100, 3, nil, false},
		{2, 1, []uint64{3}, true},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("after_%d_limit_%d", c.after, c.limit), func(t *testing.T) {
			page, more, err := db.ListMessages(org.OrgID, conv.ID, c.after, c.limit)
			if err != nil {
				t.Fatal(err)
			}
			var seqs []uint64
			for _, m := range page {
				seqs = append(seqs, m.Seq)
				if m.ConversationID != conv.ID || m.Text != fmt.Sprintf("m%d", m.Seq) {
					t.Errorf("seq %d is %q of %s", m.Seq, m.Text, m.ConversationID)
				}
			}
			if fmt.Sprint(seqs) != fmt.Sprint(c.wantSeqs) || more != c.wantMore {
				t.Errorf("page = %v more=%v, want %v more=%v", seqs, more, c.wantSeqs, c.wantMore)
			}
			if page == nil {
				t.Error("an empty page is nil; it must encode as [] not null")
			}
		})
	}
}

// Section 6: a status change between a caller's check and its commit is judged again inside the
// transaction, by the same table. Each case queues its steps behind a held commit loop so that
// they commit in exactly the listed order, as if they had raced.
func TestPostMessageRechecksStatusInTransaction(t *testing.T) {
	type step struct {
		patch   Status // a PATCH to this status, or else
		author  Author // a post by this author
		wantErr string // the contract code it must get, "" for success
	}
	cases := []struct {
		name        string
		start       Status
		steps       []step
		wantRoles   []Role // the thread afterwards
		wantStatus  Status
		wantUpdates int // conversation.updated events
	}{
		{
			name:      "takeover already made by a PATCH: posted plainly",
			start:     StatusAgentRequested,
			steps:     []step{{patch: StatusOpen}, {author: AuthorAgent}},
			wantRoles: []Role{RoleAssistant}, wantStatus: StatusOpen, wantUpdates: 1,
		},
		{
			name:      "takeover already made by another reply: one marker",
			start:     StatusAgentRequested,
			steps:     []step{{author: AuthorAgent}, {author: AuthorAgent}},
			wantRoles: []Role{RoleSystem, RoleAssistant, RoleAssistant}, wantStatus: StatusOpen, wantUpdates: 1,
		},
		{
			name:      "resolved meanwhile: refused, nothing written",
			start:     StatusOpen,
			steps:     []step{{patch: StatusResolved}, {author: AuthorAgent, wantErr: CodeInvalidState}},
			wantRoles: nil, wantStatus: StatusResolved, wantUpdates: 1,
		},
		{
			name:      "takeover target resolved meanwhile: no marker, no reply",
			start:     StatusAgentRequested,
			steps:     []step{{patch: StatusResolved}, {author: AuthorAgent, wantErr: CodeInvalidState}},
			wantRoles: nil, wantStatus: StatusResolved, wantUpdates: 1,
		},
		{
			name:      "bot handed over meanwhile: bot refused",
			start:     StatusBotActive,
			steps:     []step{{patch: StatusAgentRequested}, {author: AuthorBot, wantErr: CodeInvalidState}},
			wantRoles: nil, wantStatus: StatusAgentRequested, wantUpdates: 1,
		},
		{
			name:      "closed meanwhile: visitor refused",
			start:     StatusResolved,
			steps:     []step{{patch: StatusClosed}, {author: AuthorVisitor, wantErr: CodeInvalidState}},
			wantRoles: nil, wantStatus: StatusClosed, wantUpdates: 1,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db := openTestDB(t)
			org := newTestOrg(t, db)
			conv := newConv(t, db, org.OrgID, c.start)
			before := latestOffset(t, db, org.OrgID)

			calls := make([]func() error, len(c.steps))
			for i, s := range c.steps {
				if s.patch != "" {
					calls[i] = func() error {
						_, _, err := db.UpdateConversation(context.Background(), org.OrgID, conv.ID, ConversationPatch{Status: &s.patch}, nil)
						return err
					}
					continue
				}
				calls[i] = func() error {
					_, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: s.author, Text: fmt.Sprintf("step %d", i)}, nil)
					return err
				}
			}
			release := holdCommitLoop(t, db)
			results := submitCalls(t, db, calls)
			release()
			for i, ch := range results {
				err := testkit.Recv(t, fmt.Sprintf("step %d", i), ch)
				if want := c.steps[i].wantErr; want != "" {
					wantCode(t, err, want)
				} else if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
			}

			var roles []Role
			for _, m := range allMessages(t, db, org.OrgID, conv.ID) {
				roles = append(roles, m.Role)
			}
			if fmt.Sprint(roles) != fmt.Sprint(c.wantRoles) {
				t.Errorf("thread roles = %v, want %v", roles, c.wantRoles)
			}
			updates, created := 0, 0
			for _, ev := range eventsAfter(t, db, org.OrgID, before) {
				switch ev.Type {
				case EventConversationUpdated:
					updates++
				case EventMessageCreated:
					created++
				}
			}
			if updates != c.wantUpdates || created != len(c.wantRoles) {
				t.Errorf("%d conversation.updated and %d message.created events, want %d and %d", updates, created, c.wantUpdates, len(c.wantRoles))
			}
			got, err := db.Conversation(org.OrgID, conv.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != c.wantStatus {
				t.Errorf("status %s, want %s", got.Status, c.wantStatus)
			}
		})
	}
}
