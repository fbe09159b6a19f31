package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/awardee/awardee/engine"
)

// TestBodiesAreDecodedStrictly: on every endpoint that takes a JSON body, invalid UTF-8, a lone
// surrogate escape, a field name that differs from the contract's only by case and a name given
// twice are 400 validation_error naming the field, and nothing is stored; the same body spelled
// correctly is accepted, so each refusal is the decoder's strictness and nothing else.
func TestBodiesAreDecodedStrictly(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	open := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	bot, visitorToken := ts.newConversation(t, org.APIKey, engine.StatusBotActive)

	// Each endpoint names one string field of its body and how a member is put in a body, so
	// that every case below can be built for it.
	endpoints := []struct {
		name, method, path, key string
		field                   string              // the field, as the contract spells it
		body                    func(string) string // the body around one member
		status                  int                 // what the well-formed body answers
	}{
		{"team message", "POST", "/conversations/" + open + "/messages", org.APIKey, "text", object, 201},
		{"bot message", "POST", "/conversations/" + bot + "/bot-messages", org.APIKey, "text", object, 201},
		{"visitor message", "POST", "/widget/conversations/" + bot + "/messages", visitorToken, "text", object, 201},
		{"patch", "PATCH", "/conversations/" + open, org.APIKey, "assignee", object, 200},
		{"open conversation", "POST", "/conversations", org.APIKey, "name", inVisitor, 201},
		{"widget conversation", "POST", "/widget/conversations", org.WidgetKey, "name", inVisitor, 201},
	}
	for _, ep := range endpoints {
		at := func(name string) string { // the path of a member named name
			if ep.field == "name" {
				return "visitor." + name
			}
			return name
		}
		f, F := ep.field, strings.ToUpper(ep.field[:1])+ep.field[1:]
		cases := []struct {
			name, member, field string
		}{
			{"invalid UTF-8", `"` + f + `":"caf` + "\xe9" + `"`, at(f)},
			{"truncated UTF-8 sequence", `"` + f + `":"` + "\xf0\x9f\x98" + `"`, at(f)},
			{"lone high surrogate", `"` + f + `":"\ud83d"`, at(f)},
			{"lone low surrogate", `"` + f + `":"a\ude00b"`, at(f)},
			{"reversed surrogate pair", `"` + f + `":"\ude00\ud83d"`, at(f)},
			{"invalid UTF-8 in an unknown field", `"` + f + `":"fine","note":"` + "\xff" + `"`, at("note")},
			{"name in capitals", `"` + strings.ToUpper(f) + `":"hello"`, at(strings.ToUpper(f))},
			{"name capitalised", `"` + F + `":"hello"`, at(F)},
			{"duplicate name", `"` + f + `":"one","` + f + `":"two"`, at(f)},
		}
		for _, tc := range cases {
			t.Run(ep.name+"/"+tc.name, func(t *testing.T) {
				before := orgSnapshot(t, ts, org.APIKey, open, bot)
				r := ts.do(t, ep.method, ep.path, ep.key, ep.body(tc.member))
				e := mustAPIError(t, r, 400, engine.CodeValidation)
				if e.Details["field"] != tc.field {
					t.Fatalf("details %v, want field %q", e.Details, tc.field)
				}
				if after := orgSnapshot(t, ts, org.APIKey, open, bot); !bytes.Equal(before, after) {
					t.Fatalf("a refused body changed what is stored:\nbefore %s\nafter  %s", before, after)
				}
			})
		}
		t.Run(ep.name+"/well-formed", func(t *testing.T) {
			body := ep.body(`"` + f + `":"caf` + "\u00e9 \\ud83d\\ude00" + `","Unknown":1`)
			if f == "assignee" { // an assignee is a member's id, never free text
				body = ep.body(`"` + f + `":"` + ts.newMember(t, org.OrgID, "ana@example.com", engine.RoleAgent).Member.ID + `","Unknown":1`)
			}
			mustStatus(t, ts.do(t, ep.method, ep.path, ep.key, body), ep.status)
		})
	}
}

func object(member string) string    { return `{` + member + `}` }
func inVisitor(member string) string { return `{"visitor":{` + member + `}}` }

// orgSnapshot is everything an org has stored that a body could change: its conversations, the
// messages of the named ones and its event log, as the API lists them.
func orgSnapshot(t *testing.T, ts *testServer, apiKey string, convs ...string) []byte {
	t.Helper()
	out := mustStatus(t, ts.do(t, "GET", "/conversations?limit=100", apiKey, nil), 200).Body
	for _, id := range convs {
		out = append(out, mustStatus(t, ts.do(t, "GET", "/conversations/"+id+"/messages?limit=100", apiKey, nil), 200).Body...)
	}
	return append(out, mustStatus(t, ts.do(t, "GET", "/events?limit=100", apiKey, nil), 200).Body...)
}
