package engine

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func convIDs(convs []Conversation) []string {
	ids := make([]string, len(convs))
	for i, c := range convs {
		ids[i] = c.ID
	}
	return ids
}

func listIDs(t *testing.T, db *DB, orgID string, status Status) []string {
	t.Helper()
	convs, next, err := db.ListConversations(orgID, status, nil, 100)
	if err != nil {
		t.Fatalf("list conversations: %v", err)
	}
	if next != nil {
		t.Fatalf("a list under 100 conversations has a next cursor")
	}
	return convIDs(convs)
}

// Newest activity first, where a message or a status change is activity: the conversation it
// touches moves to the front. The clock is made to tick between steps because times carry
// milliseconds and the order of two writes within one millisecond is not the activity order.
func TestListConversationsNewestActivityFirst(t *testing.T) {
	db, clock := openClockedDB(t)
	org := newTestOrg(t, db)
	var a, b, c Conversation
	for _, p := range []*Conversation{&a, &b, &c} {
		*p = newConv(t, db, org.OrgID, StatusOpen)
		clock.Advance(time.Millisecond)
	}
	if got, want := listIDs(t, db, org.OrgID, ""), []string{c.ID, b.ID, a.ID}; !slices.Equal(got, want) {
		t.Fatalf("after creating a, b, c: %v, want [c b a] %v", got, want)
	}

	reply := postAgent(t, db, org.OrgID, a.ID, "back to the oldest")
	if got, want := listIDs(t, db, org.OrgID, ""), []string{a.ID, c.ID, b.ID}; !slices.Equal(got, want) {
		t.Errorf("after posting to a: %v, want [a c b] %v", got, want)
	}
	if got, want := listIDs(t, db, org.OrgID, StatusOpen), []string{a.ID, c.ID, b.ID}; !slices.Equal(got, want) {
		t.Errorf("open list after posting to a: %v, want [a c b] %v", got, want)
	}
	stored, err := db.Conversation(org.OrgID, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !stored.LastActivityAt.Equal(reply.CreatedAt.Time) {
		t.Errorf("last_activity_at = %v, want the reply's created_at %v", stored.LastActivityAt, reply.CreatedAt)
	}

	clock.Advance(time.Millisecond)
	patchStatus(t, db, org.OrgID, b.ID, StatusResolved)
	if got, want := listIDs(t, db, org.OrgID, ""), []string{b.ID, a.ID, c.ID}; !slices.Equal(got, want) {
		t.Errorf("after resolving b: %v, want [b a c] %v", got, want)
	}
	// b left the open list and joined the resolved one: the index follows status changes.
	if got, want := listIDs(t, db, org.OrgID, StatusOpen), []string{a.ID, c.ID}; !slices.Equal(got, want) {
		t.Errorf("open list after resolving b: %v, want %v", got, want)
	}
	if got, want := listIDs(t, db, org.OrgID, StatusResolved), []string{b.ID}; !slices.Equal(got, want) {
		t.Errorf("resolved list: %v, want %v", got, want)
	}
}

// The status filter returns exactly the conversations in that status, of this org only.
func TestListConversationsStatusFilter(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	other := newTestOrg(t, db)
	want := map[Status][]string{}
	var all []string
	for _, s := range Statuses {
		for range 2 {
			c := newConv(t, db, org.OrgID, s)
			want[s] = append(want[s], c.ID)
			all = append(all, c.ID)
		}
		newConv(t, db, other.OrgID, s)
	}
	for _, s := range Statuses {
		got := listIDs(t, db, org.OrgID, s)
		slices.Sort(got)
		slices.Sort(want[s])
		if !slices.Equal(got, want[s]) {
			t.Errorf("status %s: %v, want %v", s, got, want[s])
		}
	}
	got := listIDs(t, db, org.OrgID, "")
	slices.Sort(got)
	slices.Sort(all)
	if !slices.Equal(got, all) {
		t.Errorf("unfiltered list has %d conversations, want this org's %d", len(got), len(all))
	}
	_, _, err := db.ListConversations(org.OrgID, "pending", nil, 10)
	wantCode(t, err, CodeValidation)
}

// Cursor paging visits every conversation exactly once, in the same order as one big page, with
// no next cursor after the last page, whether or not the total is a multiple of the limit. Most
// conversations here share a millisecond, so the tie order (newest created first) and cursors
// that fall inside a run of equal times are exercised too.
func TestListConversationsPaging(t *testing.T) {
	cases := []struct {
		total, limit int
		status       Status
	}{
		{23, 5, ""},
		{20, 5, ""},
		{5, 5, ""},
		{1, 1, ""},
		{0, 5, ""},
		{11, 3, StatusOpen},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%d_by_%d_%s", c.total, c.limit, c.status), func(t *testing.T) {
			db := openTestDB(t)
			org := newTestOrg(t, db)
			for range c.total {
				newConv(t, db, org.OrgID, StatusOpen)
			}
			if c.status != "" {
				newConv(t, db, org.OrgID, StatusBotActive) // outside the filtered list
			}
			whole, _, err := db.ListConversations(org.OrgID, c.status, nil, 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(whole) != c.total {
				t.Fatalf("one big page has %d conversations, want %d", len(whole), c.total)
			}

			var paged []Conversation
			var cursor []byte
			pages := 0
			for {
				page, next, err := db.ListConversations(org.OrgID, c.status, cursor, c.limit)
				if err != nil {
					t.Fatalf("page %d: %v", pages, err)
				}
				pages++
				if len(page) > c.limit || (next != nil && len(page) != c.limit) {
					t.Fatalf("page %d has %d conversations (limit %d) and next=%v", pages, len(page), c.limit, next != nil)
				}
				paged = append(paged, page...)
				if next == nil {
					break
				}
				if pages > c.total+1 {
					t.Fatal("paging does not end")
				}
				cursor = next
			}
			if got, want := convIDs(paged), convIDs(whole); !slices.Equal(got, want) {
				t.Errorf("pages gave %v, one big page %v", got, want)
			}
			seen := map[string]bool{}
			for i, conv := range paged {
				if seen[conv.ID] {
					t.Errorf("%s listed twice", conv.ID)
				}
				seen[conv.ID] = true
				// Newest activity first; within one millisecond, newest created first (IDs grow).
				if i > 0 {
					prev := paged[i-1]
					if conv.LastActivityAt.After(prev.LastActivityAt.Time) ||
						(conv.LastActivityAt.Equal(prev.LastActivityAt.Time) && conv.ID > prev.ID) {
						t.Errorf("position %d (%s, %v) should come before position %d (%s, %v)", i, conv.ID, conv.LastActivityAt, i-1, prev.ID, prev.LastActivityAt)
					}
				}
			}
			wantPages := max(1, (c.total+c.limit-1)/c.limit)
			if pages != wantPages {
				t.Errorf("%d pages, want %d", pages, wantPages)
			}
		})
	}
}

// A cursor is only good for the list that gave it: another status, or another org, is a
// validation error rather than a window into someone else's index.
func TestListConversationsForeignCursor(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	other := newTestOrg(t, db)
	for range 3 {
		newConv(t, db, org.OrgID, StatusOpen)
	}
	_, next, err := db.ListConversations(org.OrgID, StatusOpen, nil, 1)
	if err != nil || next == nil {
		t.Fatalf("first page: next=%v err=%v", next, err)
	}
	for _, c := range []struct {
		name   string
		orgID  string
		status Status
	}{
		{"other status", org.OrgID, StatusResolved},
		{"unfiltered list", org.OrgID, ""},
		{"other org", other.OrgID, StatusOpen},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := db.ListConversations(c.orgID, c.status, next, 10)
			wantCode(t, err, CodeValidation)
		})
	}
}

// Section 3: another org's conversation answers not_found exactly like a missing one, on every
// path that takes a conversation ID, and nothing is written through it; malformed IDs are
// not_found too.
func TestOtherOrgsConversationIsNotFound(t *testing.T) {
	db := openTestDB(t)
	owner := newTestOrg(t, db)
	caller := newTestOrg(t, db)
	// bot_active accepts a visitor message, a request for an agent and a PATCH to closed, so a
	// lookup that leaked across orgs would show as a write.
	theirs := newConv(t, db, owner.OrgID, StatusBotActive)
	ownerBefore := latestOffset(t, db, owner.OrgID)

	closed := StatusClosed
	ops := []struct {
		name string
		call func(orgID, convID string) error
	}{
		{"Conversation", func(orgID, convID string) error {
			_, err := db.Conversation(orgID, convID)
			return err
		}},
		{"UpdateConversation", func(orgID, convID string) error {
			_, _, err := db.UpdateConversation(context.Background(), orgID, convID, ConversationPatch{Status: &closed}, nil)
			return err
		}},
		{"PostMessage", func(orgID, convID string) error {
			_, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: orgID, ConversationID: convID, Author: AuthorVisitor, Text: "hi"}, nil)
			return err
		}},
		{"ListMessages", func(orgID, convID string) error {
			_, _, err := db.ListMessages(orgID, convID, 0, 10)
			return err
		}},
		{"RequestAgent", func(orgID, convID string) error {
			_, _, err := db.RequestAgent(context.Background(), orgID, convID, nil)
			return err
		}},
	}
	ids := []struct{ name, id string }{
		{"other org's", theirs.ID},
		{"malformed empty", ""},
		{"malformed prefix only", PrefixConversation},
		{"malformed short", "conv_123"},
		{"malformed wrong prefix", PrefixMessage + theirs.ID[len(PrefixConversation):]},
		{"malformed bad ulid chars", "conv_IIIIIIIIIIIIIIIIIIIIIIIIII"},
		{"malformed ulid overflow", "conv_8ZZZZZZZZZZZZZZZZZZZZZZZZZ"},
		{"malformed trailing byte", theirs.ID + "0"},
	}
	missing := newID(PrefixConversation)
	for _, op := range ops {
		// What a conversation that does not exist at all answers: the reference.
		ref := wantCode(t, op.call(caller.OrgID, missing), CodeNotFound)
		for _, id := range ids {
			t.Run(op.name+"/"+id.name, func(t *testing.T) {
				e := wantCode(t, op.call(caller.OrgID, id.id), CodeNotFound)
				if e.Message != ref.Message || !reflect.DeepEqual(e.Details, ref.Details) {
					t.Errorf("answer %q %v differs from a missing conversation's %q %v", e.Message, e.Details, ref.Message, ref.Details)
				}
			})
		}
	}

	got, err := db.Conversation(owner.OrgID, theirs.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusBotActive {
		t.Errorf("the owner's conversation is now %s: another org changed it", got.Status)
	}
	if n := len(allMessages(t, db, owner.OrgID, theirs.ID)); n != 0 {
		t.Errorf("another org posted %d messages into it", n)
	}
	if n := latestOffset(t, db, owner.OrgID) - ownerBefore; n != 0 {
		t.Errorf("%d events appended to the owner's log", n)
	}
	if n := latestOffset(t, db, caller.OrgID); n != 0 {
		t.Errorf("%d events appended to the caller's log", n)
	}
}

// CountByStatus (the metrics gauge) follows creates and every kind of status change, summed over
// all orgs.
func TestCountByStatus(t *testing.T) {
	db := openTestDB(t)
	a := newTestOrg(t, db)
	b := newTestOrg(t, db)
	want := map[Status]uint64{}
	for _, s := range Statuses {
		want[s] = 0
	}
	check := func(step string) {
		t.Helper()
		got, err := db.CountByStatus()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("after %s: %v, want %v", step, got, want)
		}
	}
	check("opening the database")

	c1 := newConv(t, db, a.OrgID, StatusOpen)
	c2 := newConv(t, db, b.OrgID, StatusOpen)
	c3 := newConv(t, db, a.OrgID, StatusBotActive)
	c4 := newConv(t, db, b.OrgID, StatusAgentRequested)
	want[StatusOpen] += 2
	want[StatusBotActive]++
	want[StatusAgentRequested]++
	check("creating four conversations in two orgs")

	patchStatus(t, db, a.OrgID, c1.ID, StatusResolved)
	want[StatusOpen]--
	want[StatusResolved]++
	check("resolving one")

	if _, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: a.OrgID, ConversationID: c1.ID, Author: AuthorVisitor, Text: "still there?"}, nil); err != nil {
		t.Fatal(err)
	}
	want[StatusResolved]--
	want[StatusOpen]++
	check("a visitor reopening it")

	postAgent(t, db, b.OrgID, c4.ID, "taking over")
	want[StatusAgentRequested]--
	want[StatusOpen]++
	check("an agent taking one over")

	if _, _, err := db.RequestAgent(context.Background(), a.OrgID, c3.ID, nil); err != nil {
		t.Fatal(err)
	}
	want[StatusBotActive]--
	want[StatusAgentRequested]++
	check("a visitor requesting an agent")

	patchStatus(t, db, b.OrgID, c2.ID, StatusOpen) // no-op
	postAgent(t, db, b.OrgID, c2.ID, "plain reply")
	check("a no-op PATCH and a plain reply")

	archived := StatusArchived
	_, _, err := db.UpdateConversation(context.Background(), b.OrgID, c2.ID, ConversationPatch{Status: &archived}, nil)
	wantCode(t, err, CodeInvalidState)
	check("a refused transition")
}

// Everything the server keeps survives a clean Close and re-Open of the same directory: orgs, keys
// (found again through their secrets), conversations, messages, the event log, and the counters
// that hand out offsets and seqs, which continue rather than restart.
func TestReopenKeepsData(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	db := openDBAt(t, dir)
	org, err := db.CreateOrg(ctx, NewOrg{Name: "durable", Rate: 7, Burst: 9, InitialStatus: StatusBotActive})
	if err != nil {
		t.Fatal(err)
	}
	key, err := db.CreateAPIKey(ctx, org.OrgID, "second")
	if err != nil {
		t.Fatal(err)
	}
	name := "Ada"
	created, _, err := db.CreateConversation(ctx, org.OrgID, NewConversation{Visitor: Visitor{Name: &name}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	conv := created.Conversation
	patchStatus(t, db, org.OrgID, conv.ID, StatusOpen)
	for i := range 3 {
		postAgent(t, db, org.OrgID, conv.ID, fmt.Sprintf("before restart %d", i))
	}
	wantOrgs, err := db.Orgs()
	if err != nil {
		t.Fatal(err)
	}
	wantConv, err := db.Conversation(org.OrgID, conv.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantMsgs := allMessages(t, db, org.OrgID, conv.ID)
	wantEvents := eventsAfter(t, db, org.OrgID, 0)
	wantCounts, err := db.CountByStatus()
	if err != nil {
		t.Fatal(err)
	}
	latest := latestOffset(t, db, org.OrgID)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openDBAt(t, dir)
	gotOrgs, err := db.Orgs()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotOrgs, wantOrgs) {
		t.Errorf("orgs after reopening = %+v, want %+v", gotOrgs, wantOrgs)
	}
	secrets := []struct {
		secret string
		kind   KeyKind
		keyID  string
		convID string
	}{
		{org.APIKey, KeyAPI, "", ""},
		{key.APIKey, KeyAPI, key.KeyID, ""},
		{org.WidgetKey, KeyWidget, "", ""},
		{created.VisitorToken, KeyVisitor, "", conv.ID},
	}
	for _, s := range secrets {
		p, err := db.Authenticate(s.secret)
		if err != nil {
			t.Errorf("%s key no longer authenticates: %v", s.kind, err)
			continue
		}
		if p.OrgID != org.OrgID || p.Kind != s.kind || p.ConversationID != s.convID || (s.keyID != "" && p.KeyID != s.keyID) {
			t.Errorf("%s key authenticates as %+v", s.kind, p)
		}
	}
	if _, err := db.Authenticate("ak_notakey"); ErrorCode(err) != CodeUnauthorized {
		t.Errorf("an unknown key after reopening: %v, want unauthorized", err)
	}
	gotConv, err := db.Conversation(org.OrgID, conv.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotConv, wantConv) {
		t.Errorf("conversation after reopening = %+v, want %+v", gotConv, wantConv)
	}
	if got := allMessages(t, db, org.OrgID, conv.ID); !reflect.DeepEqual(got, wantMsgs) {
		t.Errorf("messages after reopening = %+v, want %+v", got, wantMsgs)
	}
	gotEvents := eventsAfter(t, db, org.OrgID, 0)
	if len(gotEvents) != len(wantEvents) {
		t.Fatalf("%d events after reopening, want %d", len(gotEvents), len(wantEvents))
	}
	for i := range gotEvents {
		g, w := gotEvents[i], wantEvents[i]
		if g.ID != w.ID || g.Offset != w.Offset || g.Type != w.Type || !bytes.Equal(g.Data, w.Data) || g.ConversationID != w.ConversationID {
			t.Errorf("event %d after reopening = %+v, want %+v", i, g, w)
		}
	}
	if got, err := db.CountByStatus(); err != nil || !reflect.DeepEqual(got, wantCounts) {
		t.Errorf("counts after reopening = %v (%v), want %v", got, err, wantCounts)
	}

	m := postAgent(t, db, org.OrgID, conv.ID, "after restart")
	if m.Seq != uint64(len(wantMsgs))+1 {
		t.Errorf("first message after reopening has seq %d, want %d", m.Seq, len(wantMsgs)+1)
	}
	if got := latestOffset(t, db, org.OrgID); got != latest+1 {
		t.Errorf("first event after reopening has offset %d, want %d", got, latest+1)
	}
}

// Every stored record keeps text as sent: a visitor's name with <, > and & is not escaped on disk.
func TestConversationRecordsAreNotEscaped(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	name := "Ann <ann> & co"
	created, _, err := db.CreateConversation(context.Background(), org.OrgID, NewConversation{Visitor: Visitor{Name: &name}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	db.bolt.View(func(btx *bolt.Tx) error {
		raw = append(raw, btx.Bucket(bucketConvs).Get([]byte(org.OrgID+created.Conversation.ID))...)
		return nil
	})
	if !bytes.Contains(raw, []byte(name)) {
		t.Fatalf("the stored conversation does not hold the name as sent: %s", raw)
	}
}
