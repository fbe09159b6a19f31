package engine

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"sync/atomic"
	"testing"
	"time"
)

// Shared helpers of the engine's tests. Every test works on a real bbolt file in its own temporary
// directory: the commit loop, fsync and key layouts are what is under test, so nothing is mocked.

// openTestDB opens a fresh database in a temporary directory and closes it when the test ends.
func openTestDB(tb testing.TB) *DB {
	tb.Helper()
	return openDBAt(tb, tb.TempDir())
}

// openDBAt opens the database in dir and, when the test ends, closes it and checks the file:
// bbolt's page check and every invariant of the key layouts (Check), so every engine test also
// proves it left a sound database. Closing twice is allowed, so a test may close it earlier
// itself (to reopen the directory, or to test Close).
func openDBAt(tb testing.TB, dir string) *DB {
	tb.Helper()
	db, _ := openClockedDBAt(tb, dir)
	return db
}

// openClockedDB is openTestDB that also hands back the database's clock, for tests that need
// time to pass between two writes.
func openClockedDB(tb testing.TB) (*DB, *testClock) {
	tb.Helper()
	return openClockedDBAt(tb, tb.TempDir())
}

// testClock is the engine's clock in every test: the real time plus an offset the test moves, so
// a test that needs time to pass (activity order, pruning cutoffs, expiry) steps it instead of
// waiting for it.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) Now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

// Advance moves the clock forward by d; times carry milliseconds, so a millisecond is enough to
// tell two writes apart.
func (c *testClock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

func openClockedDBAt(tb testing.TB, dir string) (*DB, *testClock) {
	tb.Helper()
	clock := &testClock{}
	db, err := Open(dir, Options{Now: clock.Now})
	if err != nil {
		tb.Fatalf("open %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := db.Close(); err != nil {
			tb.Errorf("close: %v", err)
		}
		problems, err := CheckDir(dir, time.Second)
		if err != nil {
			tb.Errorf("check: %v", err)
		}
		for _, p := range problems {
			tb.Errorf("check: %v", p)
		}
	})
	return db, clock
}

// newTestOrg creates an org whose initial status is open.
func newTestOrg(tb testing.TB, db *DB) CreatedOrg {
	tb.Helper()
	org, err := db.CreateOrg(context.Background(), NewOrg{Name: "test org"})
	if err != nil {
		tb.Fatalf("create org: %v", err)
	}
	return org
}

// newConv creates a conversation in status s, reached through the shortest allowed PATCH path
// (PathTo) when it cannot be opened in it.
func newConv(tb testing.TB, db *DB, orgID string, s Status) Conversation {
	tb.Helper()
	create, path, ok := PathTo(s)
	if !ok {
		tb.Fatalf("set-up: no path to status %s", s)
	}
	created, _, err := db.CreateConversation(context.Background(), orgID, NewConversation{Status: create}, nil)
	if err != nil {
		tb.Fatalf("create conversation: %v", err)
	}
	c := created.Conversation
	for _, next := range path {
		c = patchStatus(tb, db, orgID, c.ID, next)
	}
	if c.Status != s {
		tb.Fatalf("set-up: conversation is %s, want %s", c.Status, s)
	}
	return c
}

// patchStatus moves a conversation to s and fails the test if that is refused.
func patchStatus(tb testing.TB, db *DB, orgID, convID string, s Status) Conversation {
	tb.Helper()
	c, _, err := db.UpdateConversation(context.Background(), orgID, convID, ConversationPatch{Status: &s}, nil)
	if err != nil {
		tb.Fatalf("patch status to %s: %v", s, err)
	}
	return c
}

// postAgent posts an agent reply and fails the test if it is refused.
func postAgent(tb testing.TB, db *DB, orgID, convID, text string) Message {
	tb.Helper()
	m, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: orgID, ConversationID: convID, Author: AuthorAgent, APIKeyID: "key_test", Text: text}, nil)
	if err != nil {
		tb.Fatalf("post message: %v", err)
	}
	return m
}

// latestOffset is the org's last event offset ever given.
func latestOffset(tb testing.TB, db *DB, orgID string) uint64 {
	tb.Helper()
	_, latest, err := db.LogBounds(orgID)
	if err != nil {
		tb.Fatalf("log bounds: %v", err)
	}
	return latest
}

// eventsAfter reads the whole log of orgID after an offset, page by page.
func eventsAfter(tb testing.TB, db *DB, orgID string, after uint64) []Event {
	tb.Helper()
	var all []Event
	for {
		page, more, err := db.ListEvents(orgID, after, 100)
		if err != nil {
			tb.Fatalf("list events: %v", err)
		}
		all = append(all, page...)
		if !more {
			return all
		}
		after = page[len(page)-1].Offset
	}
}

// allMessages reads a conversation's whole thread.
func allMessages(tb testing.TB, db *DB, orgID, convID string) []Message {
	tb.Helper()
	var all []Message
	var after uint64
	for {
		page, more, err := db.ListMessages(orgID, convID, after, 100)
		if err != nil {
			tb.Fatalf("list messages: %v", err)
		}
		all = append(all, page...)
		if !more {
			return all
		}
		after = page[len(page)-1].Seq
	}
}

// decodeData decodes an event's data into T.
func decodeData[T any](tb testing.TB, ev Event) T {
	tb.Helper()
	var v T
	if err := json.Unmarshal(ev.Data, &v); err != nil {
		tb.Fatalf("event %d (%s) data: %v: %s", ev.Offset, ev.Type, err, ev.Data)
	}
	return v
}

// statusChange returns the from and to of an event's changes.status, as the wire carries them.
func statusChange(tb testing.TB, ev Event) (from, to string) {
	tb.Helper()
	if ev.Type != EventConversationUpdated {
		tb.Fatalf("event %d is %s, want %s", ev.Offset, ev.Type, EventConversationUpdated)
	}
	var d struct {
		Changes map[string]struct {
			From string `json:"from"`
			To   string `json:"to"`
		} `json:"changes"`
	}
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		tb.Fatalf("event %d data: %v", ev.Offset, err)
	}
	ch, ok := d.Changes["status"]
	if !ok {
		tb.Fatalf("event %d has no changes.status: %s", ev.Offset, ev.Data)
	}
	return ch.From, ch.To
}

// wantCode fails the test unless err is an *Error with the given code, and returns it.
func wantCode(tb testing.TB, err error, code string) *Error {
	tb.Helper()
	var e *Error
	if !errors.As(err, &e) {
		tb.Fatalf("error = %v (%T), want an *Error with code %s", err, err, code)
	}
	if e.Code != code {
		tb.Fatalf("error code = %s (%v), want %s", e.Code, e, code)
	}
	return e
}

// wantDetails fails the test unless e carries exactly the given details.
func wantDetails(tb testing.TB, e *Error, want map[string]any) {
	tb.Helper()
	if !reflect.DeepEqual(e.Details, want) {
		tb.Fatalf("details = %#v, want %#v", e.Details, want)
	}
}
