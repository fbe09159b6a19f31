package engine

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// contractTransitions is section 4's table copied from API.md as written (rows = from, columns =
// to, in the order of Statuses), kept apart from the engine's own table so that a slip in either
// one shows up here.
var contractTransitions = map[Status]string{
	StatusBotActive:      "-   yes yes yes yes no",
	StatusAgentRequested: "yes -   yes yes yes no",
	StatusOpen:           "yes yes -   yes yes no",
	StatusResolved:       "no  no  yes -   yes yes",
	StatusClosed:         "no  no  yes no  -   yes",
	StatusArchived:       "no  no  yes no  no  -",
}

// contractCell returns section 4's answer for from → to: "yes", "no" or "-" (same status).
func contractCell(t *testing.T, from, to Status) string {
	t.Helper()
	cells := strings.Fields(contractTransitions[from])
	if len(cells) != len(Statuses) {
		t.Fatalf("contract row %s has %d cells", from, len(cells))
	}
	return cells[to.index()]
}

func TestCanTransitionMatchesContract(t *testing.T) {
	for _, from := range Statuses {
		for _, to := range Statuses {
			want := contractCell(t, from, to) == "yes"
			if got := CanTransition(from, to); got != want {
				t.Errorf("CanTransition(%s, %s) = %v, want %v", from, to, got, want)
			}
		}
	}
	// Unknown statuses never transition, in either direction.
	for _, s := range []Status{"", "pending", "OPEN"} {
		if CanTransition(s, StatusOpen) || CanTransition(StatusOpen, s) {
			t.Errorf("CanTransition accepts unknown status %q", s)
		}
	}
}

// Every cell of section 4's table through the real PATCH path: an allowed move changes the
// status and appends exactly one conversation.updated event with changes.status; a refused one is
// invalid_state with details from/to and changes nothing; the current status is a silent no-op.
func TestUpdateConversationStatusTable(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	for _, from := range Statuses {
		for _, to := range Statuses {
			cell := contractCell(t, from, to)
			t.Run(fmt.Sprintf("%s_to_%s_%s", from, to, cell), func(t *testing.T) {
				conv := newConv(t, db, org.OrgID, from)
				before := latestOffset(t, db, org.OrgID)

				got, _, err := db.UpdateConversation(context.Background(), org.OrgID, conv.ID, ConversationPatch{Status: &to}, nil)

				wantStatus := from
				if cell == "yes" {
					wantStatus = to
				}
				events := eventsAfter(t, db, org.OrgID, before)
				switch cell {
				case "yes":
					if err != nil {
						t.Fatalf("allowed transition refused: %v", err)
					}
					if len(events) != 1 {
						t.Fatalf("%d events, want exactly 1 conversation.updated", len(events))
					}
					f, tt := statusChange(t, events[0])
					if f != string(from) || tt != string(to) {
						t.Errorf("changes.status = {%s, %s}, want {%s, %s}", f, tt, from, to)
					}
					data := decodeData[ConversationUpdatedData](t, events[0])
					if data.Conversation.ID != conv.ID || data.Conversation.Status != to {
						t.Errorf("event's conversation = %s in %s, want %s in %s", data.Conversation.ID, data.Conversation.Status, conv.ID, to)
					}
					if events[0].Offset != before+1 {
						t.Errorf("event offset = %d, want %d", events[0].Offset, before+1)
					}
				case "no":
					e := wantCode(t, err, CodeInvalidState)
					wantDetails(t, e, map[string]any{"from": string(from), "to": string(to)})
					if len(events) != 0 {
						t.Errorf("refused transition appended %d events", len(events))
					}
				case "-":
					if err != nil {
						t.Fatalf("PATCH to the current status: %v, want a no-op", err)
					}
					if len(events) != 0 {
						t.Errorf("no-op PATCH appended %d events", len(events))
					}
				}
				if err == nil && got.Status != wantStatus {
					t.Errorf("returned status %s, want %s", got.Status, wantStatus)
				}
				stored, err := db.Conversation(org.OrgID, conv.ID)
				if err != nil {
					t.Fatal(err)
				}
				if stored.Status != wantStatus {
					t.Errorf("stored status %s, want %s", stored.Status, wantStatus)
				}
			})
		}
	}
}

// messageRule is what the contract says a post by author does in status: refused
// (invalid_state), or allowed with a possible takeover and the status it leaves behind.
type messageRule struct {
	author   Author
	status   Status
	allowed  bool
	takeover bool
	after    Status
}

// messageRules is the seed's table for agents (section 6), the bot rule and the visitor rules of
// section 5, written out for every (author, status) pair.
var messageRules = []messageRule{
	{AuthorAgent, StatusBotActive, false, false, StatusBotActive},
	{AuthorAgent, StatusAgentRequested, true, true, StatusOpen},
	{AuthorAgent, StatusOpen, true, false, StatusOpen},
	{AuthorAgent, StatusResolved, false, false, StatusResolved},
	{AuthorAgent, StatusClosed, false, false, StatusClosed},
	{AuthorAgent, StatusArchived, false, false, StatusArchived},

	{AuthorBot, StatusBotActive, true, false, StatusBotActive},
	{AuthorBot, StatusAgentRequested, false, false, StatusAgentRequested},
	{AuthorBot, StatusOpen, false, false, StatusOpen},
	{AuthorBot, StatusResolved, false, false, StatusResolved},
	{AuthorBot, StatusClosed, false, false, StatusClosed},
	{AuthorBot, StatusArchived, false, false, StatusArchived},

	{AuthorVisitor, StatusBotActive, true, false, StatusBotActive},
	{AuthorVisitor, StatusAgentRequested, true, false, StatusAgentRequested},
	{AuthorVisitor, StatusOpen, true, false, StatusOpen},
	{AuthorVisitor, StatusResolved, true, false, StatusOpen},
	{AuthorVisitor, StatusClosed, false, false, StatusClosed},
	{AuthorVisitor, StatusArchived, false, false, StatusArchived},
}

func TestPlanAndCheckMessage(t *testing.T) {
	if len(messageRules) != 3*len(Statuses) {
		t.Fatalf("messageRules has %d rows, want one per (author, status)", len(messageRules))
	}
	for _, r := range messageRules {
		t.Run(fmt.Sprintf("%s_in_%s", r.author, r.status), func(t *testing.T) {
			plan := PlanMessage(r.author, r.status)
			want := MessagePlan{Allowed: r.allowed, Takeover: r.takeover, NewState: r.after}
			if plan != want {
				t.Errorf("PlanMessage = %+v, want %+v", plan, want)
			}
			err := CheckMessage(r.author, r.status)
			if r.allowed {
				if err != nil {
					t.Errorf("CheckMessage = %v, want nil", err)
				}
				return
			}
			e := wantCode(t, err, CodeInvalidState)
			wantDetails(t, e, map[string]any{"status": string(r.status)})
		})
	}
}

// TestPathTo: every status is reachable, each step of the path is a transition the table
// allows, and the path is as short as it can be.
func TestPathTo(t *testing.T) {
	want := map[Status]int{ // patches needed from the status a conversation opens in
		StatusBotActive: 0, StatusAgentRequested: 0, StatusOpen: 0,
		StatusResolved: 1, StatusClosed: 1, StatusArchived: 2,
	}
	for _, to := range Statuses {
		create, patches, ok := PathTo(to)
		if !ok {
			t.Fatalf("%s: unreachable", to)
		}
		if !creatableStatus(create) {
			t.Fatalf("%s: opens in %s, which cannot be opened in", to, create)
		}
		if len(patches) != want[to] {
			t.Fatalf("%s: path %v from %s, want %d steps", to, patches, create, want[to])
		}
		at := create
		for _, next := range patches {
			if !CanTransition(at, next) {
				t.Fatalf("%s: path %v takes %s → %s, which the table forbids", to, patches, at, next)
			}
			at = next
		}
		if at != to {
			t.Fatalf("path ends at %s, want %s", at, to)
		}
	}
	if _, _, ok := PathTo("nowhere"); ok {
		t.Fatal("an unknown status is reachable")
	}
}
