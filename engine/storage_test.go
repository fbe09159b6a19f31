package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/awardee/awardee/internal/testkit"
	bolt "go.etcd.io/bbolt"
)

// TestFeedAndLogCarryTheSameEvents: a stored message.created event keeps a reference to its
// message, not a copy, and yet the log renders every event with exactly the Data bytes that the
// feed handed consumers in memory when it committed.
func TestFeedAndLogCarryTheSameEvents(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	sink := newEventSink(db)
	conv := newConv(t, db, org.OrgID, StatusAgentRequested)
	text := `<b>"Hi" & welcome</b> ` + strings.Repeat("é😀<", 3000)
	reply := postAgent(t, db, org.OrgID, conv.ID, text) // a takeover: status change, marker, reply
	assignee := newTestMember(t, db, org.OrgID, "ann@example.com", RoleAgent).Member.ID
	if _, _, err := db.UpdateConversation(context.Background(), org.OrgID, conv.ID, ConversationPatch{SetAssignee: true, Assignee: &assignee}, nil); err != nil {
		t.Fatal(err)
	}
	idem := &Idempotency{Key: "keyed", Fingerprint: [32]byte{9}, Status: 201}
	keyed, answered, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, Text: text}, idem)
	if err != nil {
		t.Fatal(err)
	}

	live := sink.snapshot()
	logged := eventsAfter(t, db, org.OrgID, 0)
	if len(live) != 5 || len(logged) != len(live) {
		t.Fatalf("%d events in the feed, %d in the log; want 5 in both", len(live), len(logged))
	}
	for i := range live {
		a, b := live[i], logged[i]
		if a.ID != b.ID || a.Offset != b.Offset || a.Type != b.Type || !a.CreatedAt.Equal(b.CreatedAt.Time) || a.ConversationID != b.ConversationID {
			t.Fatalf("event %d: feed %+v, log %+v", i, a, b)
		}
		if !bytes.Equal(a.Data, b.Data) {
			t.Fatalf("event %d (%s): feed data\n%s\nlog data\n%s", a.Offset, a.Type, a.Data, b.Data)
		}
		if !json.Valid(b.Data) {
			t.Fatalf("event %d: data is not JSON", b.Offset)
		}
	}
	if m := decodeData[MessageCreatedData](t, logged[2]).Message; m.ID != reply.ID || m.Text != text {
		t.Fatalf("the reply's event carries message %s with %d bytes of text", m.ID, len(m.Text))
	}

	// On disk the text is there as sent, once per message: not in the events, not in the
	// keyed record, and never escaped.
	stored := `& welcome</b> ` + strings.Repeat("é😀<", 5)
	err = db.bolt.View(func(btx *bolt.Tx) error {
		msgs := 0
		btx.Bucket(bucketMsgs).ForEach(func(k, v []byte) error {
			if bytes.Contains(v, []byte(stored)) {
				msgs++
			}
			if bytes.Contains(v, []byte(`\u003c`)) || bytes.Contains(v, []byte(`\u0026`)) {
				t.Errorf("message %x is stored escaped: %.80s", k, v)
			}
			return nil
		})
		if msgs != 2 {
			t.Errorf("the text is in %d stored messages, want 2", msgs)
		}
		btx.Bucket(bucketEvents).Bucket([]byte(org.OrgID)).ForEach(func(k, v []byte) error {
			if bytes.Contains(v, []byte(stored)) || len(v) > 1000 {
				t.Errorf("event %x stores %d bytes, the text included: it should name its message", k, len(v))
			}
			return nil
		})
		if rec := btx.Bucket(bucketIdem).Get(idemKey(org.OrgID, "keyed")); len(rec) > 200 {
			t.Errorf("the keyed post's record stores %d bytes: it should name its message", len(rec))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The keyed record replays the 201 body byte for byte.
	rec, err := db.LookupIdempotency(org.OrgID, "keyed", time.Hour)
	if err != nil || rec == nil {
		t.Fatalf("lookup: %v %v", rec, err)
	}
	want, _ := marshal(keyed)
	if !bytes.Equal(rec.Body, answered) || !bytes.Equal(rec.Body, want) {
		t.Fatalf("replay body\n%s\nanswered\n%s", rec.Body, answered)
	}
}

// TestListPagesEndAtMaxPageBytes: messages and events whose JSON would take a 100-item page past
// 4 MiB end the page early with more set, and the next pages bring the rest, each item once.
func TestListPagesEndAtMaxPageBytes(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	// Each quote is two bytes of JSON: about 64 KB a message, 80 of them well over 4 MiB.
	const posts = 80
	text := strings.Repeat(`"`, MaxTextLength)
	var wg sync.WaitGroup
	for range posts {
		wg.Go(func() {
			if _, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, Text: text}, nil); err != nil {
				t.Error(err)
			}
		})
	}
	testkit.WaitAll(t, "posts", &wg)

	type page struct {
		items int
		bytes int
		more  bool
		last  uint64
	}
	pages := func(list func(after uint64) (page, error)) []page {
		var out []page
		after := uint64(0)
		for {
			p, err := list(after)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
			if !p.more || len(out) > posts {
				return out
			}
			after = p.last
		}
	}
	check := func(what string, got []page) {
		t.Helper()
		total := 0
		for _, p := range got {
			total += p.items
			if p.bytes > MaxPageBytes {
				t.Errorf("%s: a page of %d items holds %d bytes of JSON, over %d", what, p.items, p.bytes, MaxPageBytes)
			}
		}
		if len(got) < 2 || total != posts {
			t.Errorf("%s: %d pages holding %d items; want at least 2 holding %d", what, len(got), total, posts)
		}
	}
	check("messages", pages(func(after uint64) (page, error) {
		msgs, more, err := db.ListMessages(org.OrgID, conv.ID, after, 100)
		if err != nil || len(msgs) == 0 {
			return page{}, err
		}
		raw, _ := marshal(msgs)
		return page{len(msgs), len(raw), more, msgs[len(msgs)-1].Seq}, nil
	}))
	check("events", pages(func(after uint64) (page, error) {
		evs, more, err := db.ListEvents(org.OrgID, after, 100)
		if err != nil || len(evs) == 0 {
			return page{}, err
		}
		raw, _ := marshal(evs)
		return page{len(evs), len(raw), more, evs[len(evs)-1].Offset}, nil
	}))
}
