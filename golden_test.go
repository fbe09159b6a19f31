package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/awardee/awardee/engine"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

var (
	goldenID     = regexp.MustCompile(`^(org|key|conv|msg|evt)_[0-9A-HJKMNP-TV-Z]{26}$`)
	goldenTime   = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$`)
	goldenToken  = regexp.MustCompile(`^vt_[a-z2-7]{32}$`)
	goldenDigits = regexp.MustCompile(`^[0-9]+$`)
)

// goldenNormalizer replaces the volatile values of response bodies with stable placeholders.
// IDs become "<conv_id_1>", "<msg_id_2>", … numbered by first appearance across the whole
// sequence, so the files still show which object is which. Values only match when they have the
// contract's exact format: a time without milliseconds or an ID of the wrong length stays as it
// is and fails the comparison.
type goldenNormalizer struct {
	ids  map[string]string
	next map[string]int
}

func newGoldenNormalizer() *goldenNormalizer {
	return &goldenNormalizer{ids: map[string]string{}, next: map[string]int{}}
}

func (n *goldenNormalizer) value(key string, v any) any {
	switch v := v.(type) {
	case map[string]any:
		// Sorted, so that two new IDs of one object are numbered the same way on every run.
		for _, k := range slices.Sorted(maps.Keys(v)) {
			v[k] = n.value(k, v[k])
		}
		return v
	case []any:
		for i, x := range v {
			v[i] = n.value(key, x)
		}
		return v
	case string:
		switch {
		case goldenID.MatchString(v):
			if p, ok := n.ids[v]; ok {
				return p
			}
			prefix := v[:strings.IndexByte(v, '_')]
			n.next[prefix]++
			p := fmt.Sprintf("<%s_id_%d>", prefix, n.next[prefix])
			n.ids[v] = p
			return p
		case goldenTime.MatchString(v):
			return "<time>"
		case goldenToken.MatchString(v):
			return "<vt>"
		case key == "next_cursor" && !goldenDigits.MatchString(v):
			return "<cursor>" // sealed under the database's own key
		}
	}
	return v
}

// render decodes body, normalizes it and pretty-prints it with sorted keys.
func (n *goldenNormalizer) render(t *testing.T, body []byte) []byte {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, body)
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(n.value("", v)); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// checkGolden compares r's normalized body with testdata/golden/name.json, or rewrites the file
// under -update.
func (n *goldenNormalizer) check(t *testing.T, name string, r resp, status int) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("%s: status %d, want %d: %s", name, r.Status, status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", name, ct)
	}
	got := n.render(t, r.Body)
	path := filepath.Join("testdata", "golden", name+".json")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestGoldenResponses -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s (run with -update if the change is intended)\n--- got\n%s--- want\n%s", name, path, got, want)
	}
}

// TestGoldenResponses pins the wire shape of the main responses of sections 5 and 6.
func TestGoldenResponses(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	n := newGoldenNormalizer()

	r := ts.do(t, "POST", "/conversations", org.APIKey,
		`{"status":"agent_requested","visitor":{"name":" Ada Lovelace ","email":"ada@example.com"}}`)
	n.check(t, "conversation_create", r, 201)
	var created engine.CreatedConversation
	if err := json.Unmarshal(r.Body, &created); err != nil {
		t.Fatal(err)
	}
	id := created.Conversation.ID

	n.check(t, "conversation_get", ts.do(t, "GET", "/conversations/"+id, org.APIKey, nil), 200)
	n.check(t, "message_post_takeover", ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey,
		`{"text":"  Hi Ada, a person is here now.  "}`), 201)
	n.check(t, "message_post", ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey,
		`{"text":"Your order shipped today."}`), 201)
	n.check(t, "message_list", ts.do(t, "GET", "/conversations/"+id+"/messages?limit=2", org.APIKey, nil), 200)
	n.check(t, "conversation_list", ts.do(t, "GET", "/conversations", org.APIKey, nil), 200)
	n.check(t, "event_list", ts.do(t, "GET", "/events", org.APIKey, nil), 200)
	n.check(t, "error_invalid_state_patch", ts.do(t, "PATCH", "/conversations/"+id, org.APIKey, `{"status":"archived"}`), 400)

	bot := ts.conversationIn(t, org.APIKey, engine.StatusBotActive)
	n.check(t, "error_invalid_state_message", ts.do(t, "POST", "/conversations/"+bot+"/messages", org.APIKey, `{"text":"hi"}`), 400)
	n.check(t, "error_not_found", ts.do(t, "GET", "/conversations/"+missingConvID(), org.APIKey, nil), 404)
}

// TestEmptyListsAreArrays: an org with nothing yet lists "data": [] (never null) and a null cursor.
func TestEmptyListsAreArrays(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusBotActive)
	for _, path := range []string{
		"/conversations?status=archived",
		"/conversations/" + id + "/messages",
		"/conversations/" + id + "/messages?after=99",
		"/events?after=99",
	} {
		r := mustStatus(t, ts.do(t, "GET", path, org.APIKey, nil), 200)
		if got := string(bytes.TrimSpace(r.Body)); got != `{"data":[],"next_cursor":null}` {
			t.Errorf("GET %s: %s", path, got)
		}
	}
	fresh := ts.newOrg(t, 0, 0)
	for _, path := range []string{"/conversations", "/events"} {
		r := mustStatus(t, ts.do(t, "GET", path, fresh.APIKey, nil), 200)
		if got := string(bytes.TrimSpace(r.Body)); got != `{"data":[],"next_cursor":null}` {
			t.Errorf("GET %s of a new org: %s", path, got)
		}
	}
}
