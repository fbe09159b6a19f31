package main

import (
	"testing"

	"github.com/awardee/awardee/engine"
)

func TestTakeoverPostsMarkerThenReply(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusAgentRequested)
	r := mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"  hi there  "}`), 201)
	if got := r.JSON(t)["text"]; got != "hi there" {
		t.Fatalf("text %q, want trimmed", got)
	}
	who, err := ts.db.Authenticate(org.APIKey)
	if err != nil {
		t.Fatal(err)
	}
	if meta := r.JSON(t)["metadata"].(map[string]any); meta["source"] != "api" || meta["api_key_id"] != who.KeyID {
		t.Fatalf("metadata %v, want source api and the posting key %s", meta, who.KeyID)
	}
	msgs := ts.messages(t, org.APIKey, id)
	if len(msgs) != 2 || msgs[0].Role != engine.RoleSystem || msgs[0].Text != engine.AgentJoinedText || msgs[1].Seq != 2 {
		t.Fatalf("messages %+v", msgs)
	}
	evs := ts.events(t, org.APIKey)
	want := []string{engine.EventConversationUpdated, engine.EventMessageCreated, engine.EventMessageCreated}
	if len(evs) != len(want) {
		t.Fatalf("%d events, want %d", len(evs), len(want))
	}
	for i, ev := range evs {
		if ev.Type != want[i] || ev.Offset != uint64(i+1) {
			t.Fatalf("event %d: %s at %d", i, ev.Type, ev.Offset)
		}
	}
}
