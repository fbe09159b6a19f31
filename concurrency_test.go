package main

import (
	"fmt"
	"sync"
	"testing"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
)

// TestConcurrentPostsShareCommits: many clients posting at once all get 201, every message is
// stored with unique seqs, and the commit loop carried them in fewer fsyncs than posts.
func TestConcurrentPostsShareCommits(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	const clients, each = 32, 20
	convs := make([]string, 4)
	for i := range convs {
		convs[i] = ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	}
	before := ts.db.CommitStats()
	var wg sync.WaitGroup
	errs := make(chan string, clients*each)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				r, err := ts.try("POST", "/conversations/"+convs[c%len(convs)]+"/messages", org.APIKey, fmt.Sprintf(`{"text":"c%d-%d"}`, c, i))
				if err != nil || r.Status != 201 {
					errs <- fmt.Sprintf("%d %s", r.Status, r.Body)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	total := 0
	for _, id := range convs {
		msgs := ts.messages(t, org.APIKey, id)
		for i, m := range msgs {
			if m.Seq != uint64(i+1) {
				t.Fatalf("%s: message %d has seq %d", id, i, m.Seq)
			}
		}
		total += len(msgs)
	}
	if total != clients*each {
		t.Fatalf("%d messages stored, want %d", total, clients*each)
	}
	after := ts.db.CommitStats()
	units, batches := after.Units-before.Units, after.Batches-before.Batches
	if units != clients*each || batches >= units {
		t.Fatalf("%d units in %d batches: concurrent posts did not share commits", units, batches)
	}
	t.Logf("%d posts in %d fsync'd batches", units, batches)
}

// TestParallelTakeoverWritesOneMarker: N replies race into one agent_requested conversation;
// the status is re-checked inside the transaction, so exactly one marker is written and every
// reply succeeds with its own seq.
func TestParallelTakeoverWritesOneMarker(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusAgentRequested)
	const replies = 24
	var wg sync.WaitGroup
	statuses := make(chan int, replies)
	for i := range replies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, _ := ts.try("POST", "/conversations/"+id+"/messages", org.APIKey, fmt.Sprintf(`{"text":"reply %d"}`, i))
			statuses <- r.Status
		}()
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 201 {
			t.Fatalf("a parallel reply got %d", s)
		}
	}
	msgs := ts.messages(t, org.APIKey, id)
	if len(msgs) != replies+1 {
		t.Fatalf("%d messages, want %d replies and one marker", len(msgs), replies)
	}
	if msgs[0].Role != engine.RoleSystem || msgs[0].Metadata.Event != "agent_joined" {
		t.Fatalf("first message is not the marker: %+v", msgs[0])
	}
	seen := map[uint64]bool{}
	for i, m := range msgs {
		if i > 0 && m.Role == engine.RoleSystem {
			t.Fatalf("a second marker at seq %d", m.Seq)
		}
		if seen[m.Seq] {
			t.Fatalf("seq %d twice", m.Seq)
		}
		seen[m.Seq] = true
	}
	updates := 0
	for _, ev := range ts.events(t, org.APIKey) {
		if ev.Type == engine.EventConversationUpdated {
			updates++
		}
	}
	if updates != 1 {
		t.Fatalf("%d conversation.updated events, want 1", updates)
	}
	conv := mustStatus(t, ts.do(t, "GET", "/conversations/"+id, org.APIKey, nil), 200).JSON(t)
	if conv["status"] != "open" || conv["assignee"] != nil {
		t.Fatalf("after takeover: %v", conv)
	}
}

// TestReplyToConversationResolvedMeanwhile: a reply passes its state check, then a PATCH that
// was queued first resolves the conversation; the re-check inside the reply's unit refuses it
// with 400 invalid_state and nothing half-written (no marker, no status change of its own).
func TestReplyToConversationResolvedMeanwhile(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusAgentRequested)
	eventsBefore := len(ts.events(t, org.APIKey))

	release := ts.holdCommitLoop(t)
	patch := ts.goDo("PATCH", "/conversations/"+id, org.APIKey, `{"status":"resolved"}`)
	testkit.WaitFor(t, "the PATCH to queue", func() bool { return ts.db.Queued() == 1 })
	reply := ts.goDo("POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"too late"}`)
	testkit.WaitFor(t, "the reply to queue behind it", func() bool { return ts.db.Queued() == 2 })
	release()

	mustStatus(t, receive(t, "the PATCH", patch), 200)
	r := mustStatus(t, receive(t, "the reply", reply), 400)
	if r.ErrorCode(t) != engine.CodeInvalidState {
		t.Fatalf("reply: %s", r.Body)
	}
	if msgs := ts.messages(t, org.APIKey, id); len(msgs) != 0 {
		t.Fatalf("%d messages written by a refused reply", len(msgs))
	}
	if n := len(ts.events(t, org.APIKey)) - eventsBefore; n != 1 {
		t.Fatalf("%d new events, want only the PATCH's", n)
	}
}
