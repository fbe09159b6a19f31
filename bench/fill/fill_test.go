package main

import (
	"context"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/hooks"
)

// TestFillWritesWhatAServerWrites: the filled directory passes every check of the key layouts,
// holds the messages asked for in the conversations it says, and its key works.
func TestFillWritesWhatAServerWrites(t *testing.T) {
	dir := t.TempDir()
	res, err := Fill(context.Background(), Config{Data: dir, Messages: 250, PerConv: 40, Writers: 4, TextSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	if res.Messages != 250 || res.Conversations != 7 || res.FileBytes == 0 {
		t.Fatalf("fill reported %+v, want 250 messages in 7 conversations", res)
	}
	problems, err := engine.CheckDir(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("check: %v", p)
	}

	db, err := engine.Open(dir, engine.Options{Buckets: hooks.Buckets})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if p, err := db.Authenticate(res.APIKey); err != nil || p.OrgID != res.OrgID {
		t.Fatalf("the printed key authenticates as %+v (%v), want org %s", p, err, res.OrgID)
	}
	counts, err := db.CountByStatus()
	if err != nil || counts[engine.StatusOpen] != 7 {
		t.Fatalf("open conversations: %v (%v), want 7", counts, err)
	}
	convs, _, err := db.ListConversations(res.OrgID, engine.StatusOpen, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, c := range convs {
		msgs, _, err := db.ListMessages(res.OrgID, c.ID, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		total += len(msgs)
	}
	if total != 250 {
		t.Errorf("the conversations hold %d messages, want 250", total)
	}
	events, _, err := db.ListEvents(res.OrgID, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 250 {
		t.Errorf("the org's log holds %d events, want one message.created per message (250)", len(events))
	}

	if _, err := Fill(context.Background(), Config{Data: dir, Messages: 1, PerConv: 1, Writers: 1, TextSize: 1}); err == nil {
		t.Error("fill wrote into a directory that already holds a database")
	}
}
