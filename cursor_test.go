package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/awardee/awardee/engine"
)

// page is one list page with the position fields the cursor tests compare.
type page struct {
	Data []struct {
		ID     string `json:"id"`
		Seq    uint64 `json:"seq"`
		Offset uint64 `json:"offset"`
	} `json:"data"`
	NextCursor *string `json:"next_cursor"`
}

func getPage(t *testing.T, ts *testServer, path, key string) page {
	t.Helper()
	var p page
	if err := json.Unmarshal(mustStatus(t, ts.do(t, "GET", path, key, nil), 200).Body, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// itemKey names an item of any list: conversations by id, messages by seq, events by offset.
func itemKey(i int, p page) string {
	return fmt.Sprintf("%s|%d|%d", p.Data[i].ID, p.Data[i].Seq, p.Data[i].Offset)
}

// follow pages through base (a path with a query) by next_cursor, limit 2, and returns every
// item in order.
func follow(t *testing.T, ts *testServer, base, key string) []string {
	t.Helper()
	var out []string
	path := base + "&limit=2"
	for range 100 {
		p := getPage(t, ts, path, key)
		for i := range p.Data {
			out = append(out, itemKey(i, p))
		}
		if p.NextCursor == nil {
			return out
		}
		path = base + "&limit=2&cursor=" + url.QueryEscape(*p.NextCursor)
	}
	t.Fatalf("%s: no end after 100 pages", base)
	return nil
}

// TestCursorsPageThroughEverything: following next_cursor visits every item of every list once,
// in the order one big page has, and ?after= stays a plain position.
func TestCursorsPageThroughEverything(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	convID, token := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	for i := range 6 {
		ts.newConversation(t, org.APIKey, engine.StatusAgentRequested)
		mustStatus(t, ts.do(t, "POST", "/conversations/"+convID+"/messages", org.APIKey, fmt.Sprintf(`{"text":"m%d"}`, i)), 201)
	}
	for _, c := range []struct{ base, key string }{
		{"/conversations?x=", org.APIKey},
		{"/conversations?status=agent_requested", org.APIKey},
		{"/conversations/" + convID + "/messages?x=", org.APIKey},
		{"/widget/conversations/" + convID + "/messages?x=", token},
		{"/events?x=", org.APIKey},
	} {
		whole := getPage(t, ts, c.base+"&limit=100", c.key)
		var want []string
		for i := range whole.Data {
			want = append(want, itemKey(i, whole))
		}
		if len(want) < 5 || whole.NextCursor != nil {
			t.Fatalf("%s: %d items in one page, cursor %v", c.base, len(want), whole.NextCursor)
		}
		if got := follow(t, ts, c.base, c.key); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("%s by cursor:\n%v\nin one page:\n%v", c.base, got, want)
		}
	}

	p := getPage(t, ts, "/conversations/"+convID+"/messages?after=4", org.APIKey)
	if len(p.Data) != 2 || p.Data[0].Seq != 5 {
		t.Fatalf("?after=4 gave %+v", p.Data)
	}
	p = getPage(t, ts, "/events?after=3", org.APIKey)
	if len(p.Data) == 0 || p.Data[0].Offset != 4 {
		t.Fatalf("/events?after=3 gave %+v", p.Data)
	}
}

// TestCursorsAreTamperEvident: a cut or edited cursor, a cursor of another list (another status
// filter, another conversation, another route, another kind of list) or of another org is 400
// validation_error, and a plain number is no cursor.
func TestCursorsAreTamperEvident(t *testing.T) {
	ts := newTestServer(t)
	org, other := ts.newOrg(t, 0, 0), ts.newOrg(t, 0, 0)
	convA, token := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	convB, _ := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	ts.newConversation(t, org.APIKey, engine.StatusOpen)
	ts.newConversation(t, other.APIKey, engine.StatusOpen)
	ts.newConversation(t, other.APIKey, engine.StatusOpen)
	for i := range 3 {
		for _, conv := range []string{convA, convB} {
			mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey, fmt.Sprintf(`{"text":"m%d"}`, i)), 201)
		}
	}
	cursorOf := func(path, key string) string {
		t.Helper()
		p := getPage(t, ts, path, key)
		if p.NextCursor == nil {
			t.Fatalf("%s has no next page", path)
		}
		return *p.NextCursor
	}
	convs := cursorOf("/conversations?limit=1", org.APIKey)
	open := cursorOf("/conversations?status=open&limit=1", org.APIKey)
	msgsA := cursorOf("/conversations/"+convA+"/messages?limit=1", org.APIKey)
	events := cursorOf("/events?limit=1", org.APIKey)
	flip := func(s string, i int) string {
		b := []byte(s)
		if i >= len(b) {
			return s + "A"
		}
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}

	for _, c := range []struct {
		name, path, key string
	}{
		{"cut", "/conversations?limit=1&cursor=" + convs[:len(convs)-1], org.APIKey},
		{"cut in half", "/conversations?limit=1&cursor=" + convs[:len(convs)/2], org.APIKey},
		{"edited", "/conversations?limit=1&cursor=" + flip(convs, 3), org.APIKey},
		{"edited tag", "/conversations?limit=1&cursor=" + flip(convs, len(convs)-2), org.APIKey},
		{"another status", "/conversations?limit=1&cursor=" + open, org.APIKey},
		{"unfiltered on a filter", "/conversations?status=open&limit=1&cursor=" + convs, org.APIKey},
		{"another org", "/conversations?limit=1&cursor=" + convs, other.APIKey},
		{"events' on conversations", "/conversations?limit=1&cursor=" + events, org.APIKey},
		{"messages edited", "/conversations/" + convA + "/messages?limit=1&cursor=" + flip(msgsA, 2), org.APIKey},
		{"messages cut", "/conversations/" + convA + "/messages?limit=1&cursor=" + msgsA[:len(msgsA)-3], org.APIKey},
		{"another conversation", "/conversations/" + convB + "/messages?limit=1&cursor=" + msgsA, org.APIKey},
		{"another route", "/widget/conversations/" + convA + "/messages?limit=1&cursor=" + msgsA, token},
		{"events' on messages", "/conversations/" + convA + "/messages?limit=1&cursor=" + events, org.APIKey},
		{"messages' on events", "/events?limit=1&cursor=" + msgsA, org.APIKey},
		{"events in another org", "/events?limit=1&cursor=" + events, other.APIKey},
		{"a plain number", "/events?limit=1&cursor=1", org.APIKey},
		{"a plain seq", "/conversations/" + convA + "/messages?cursor=1", org.APIKey},
	} {
		r := ts.do(t, "GET", c.path, c.key, nil)
		if r.Status != 400 || r.ErrorCode(t) != engine.CodeValidation {
			t.Errorf("%s: %d %s, want 400 validation_error", c.name, r.Status, r.Body)
			continue
		}
		if field := r.JSON(t)["error"].(map[string]any)["details"].(map[string]any)["field"]; field != "cursor" {
			t.Errorf("%s: details.field %v, want cursor", c.name, field)
		}
	}
	// Each untouched cursor still works on its own list.
	mustStatus(t, ts.do(t, "GET", "/conversations?limit=1&cursor="+convs, org.APIKey, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/conversations?status=open&limit=1&cursor="+open, org.APIKey, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/conversations/"+convA+"/messages?limit=1&cursor="+msgsA, org.APIKey, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/events?limit=1&cursor="+events, org.APIKey, nil), 200)
}

// TestCursorsOutliveARestart: the key is stored in the database, so a cursor handed out before a
// restart still pages on after it.
func TestCursorsOutliveARestart(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	for range 3 {
		ts.newConversation(t, org.APIKey, engine.StatusOpen)
	}
	first := getPage(t, ts, "/conversations?limit=2", org.APIKey)
	if first.NextCursor == nil {
		t.Fatal("no next page")
	}
	ts.stop(t)
	cfg := defaultConfig()
	cfg.Data = ts.dir
	again := startTestServer(t, cfg)
	rest := getPage(t, again, "/conversations?limit=2&cursor="+url.QueryEscape(*first.NextCursor), org.APIKey)
	if len(rest.Data) != 1 || rest.NextCursor != nil || rest.Data[0].ID == first.Data[0].ID || rest.Data[0].ID == first.Data[1].ID {
		t.Fatalf("after the restart: %+v", rest)
	}
}
