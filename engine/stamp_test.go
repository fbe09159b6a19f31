package engine

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
)

// TestConversationJSONAtIsMarshal: a conversation encoded inside a unit, its times equal to the
// batch's copied from the batch's formatted time, is still byte for byte what marshal makes,
// whether both times, one or neither are the batch's.
func TestConversationJSONAtIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 500 {
		now := newStamp(sampleTime(r))
		c := Conversation{ID: newID(PrefixConversation), Status: StatusOpen, CreatedAt: sampleTime(r), LastActivityAt: sampleTime(r)}
		switch i % 3 {
		case 0:
			c.LastActivityAt = now.at
		case 1:
			c.CreatedAt, c.LastActivityAt = now.at, now.at
		}
		want, err := marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := conversationJSONAt(&c, now)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

// TestPostedEventsHaveTheirOwnIDs: the message.created event's id, drafted before its unit runs,
// is a well-formed event id, and the events of a takeover (status change, marker, reply) and of
// posts to the same conversation never share one.
func TestPostedEventsHaveTheirOwnIDs(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusAgentRequested)
	for _, author := range []Author{AuthorAgent, AuthorAgent, AuthorAgent} {
		in := NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: author, APIKeyID: "key_x", Text: "hello"}
		if _, _, err := db.PostMessage(context.Background(), in, nil); err != nil {
			t.Fatal(err)
		}
	}
	events, _, err := db.ListEvents(org.OrgID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	created := 0
	for _, ev := range events {
		if !ValidID(PrefixEvent, ev.ID) || seen[ev.ID] {
			t.Fatalf("event %d has id %q (seen before: %v)", ev.Offset, ev.ID, seen[ev.ID])
		}
		seen[ev.ID] = true
		if ev.Type == EventMessageCreated {
			created++
		}
	}
	if created != 4 { // three posts and the takeover's marker
		t.Fatalf("%d message.created events, want 4", created)
	}
}
