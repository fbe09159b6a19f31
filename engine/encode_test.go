package engine

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
)

// encodeSamples are strings that stress an escaper: quotes, backslashes, every kind of control
// character, HTML's and JavaScript's special characters (which marshal leaves as they are),
// multi-byte runes and the empty string.
var encodeSamples = []string{
	"", "Ann", `say "hi"`, `back\slash`, "tab\there\nnew\r\x00\x01\x1f\x7f", "<b>&amp;</b>",
	"\u2028\u2029", "del\x7fonly", "héllo wörld", "emoji 🎉 and 中文", "\ufeffbom", "/slash/", "'single'",
}

func samplePtr(r *rand.Rand) *string {
	if r.IntN(3) == 0 {
		return nil
	}
	s := encodeSamples[r.IntN(len(encodeSamples))]
	return &s
}

func sampleTime(r *rand.Rand) Time {
	return Time{time.UnixMilli(r.Int64N(4_102_444_800_000)).UTC()}
}

// TestConversationJSONIsMarshal: the hand-written conversation encoding is byte for byte what
// marshal makes, for every shape of visitor and assignee.
func TestConversationJSONIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		c := Conversation{
			ID: newID(PrefixConversation), Status: Statuses[r.IntN(len(Statuses))], Assignee: samplePtr(r),
			Visitor:   Visitor{Name: samplePtr(r), Email: samplePtr(r), UserID: samplePtr(r)},
			CreatedAt: sampleTime(r), LastActivityAt: sampleTime(r),
		}
		if r.IntN(2) == 0 {
			v := r.IntN(2) == 0
			c.Visitor.Verified = &v
		}
		want, err := marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := conversationJSON(&c)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

// TestMessageDraftIsMarshal: a drafted message finished with its seq and time is byte for byte
// what marshal makes of the same message.
func TestMessageDraftIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	metas := []MessageMetadata{
		{Source: "api", APIKeyID: "key_1"}, {Source: "dashboard", MemberID: "mem_1"}, {Source: "bot", APIKeyID: "key_2"},
		{Source: "widget"}, {Source: "system", Event: "agent_joined"}, {Source: "x", APIKeyID: "a", MemberID: "b", Event: "c"},
	}
	roles := []Role{RoleAssistant, RoleUser, RoleSystem}
	for i := range 2000 {
		msg := Message{
			ID: newID(PrefixMessage), ConversationID: newID(PrefixConversation), Role: roles[r.IntN(len(roles))],
			Text: encodeSamples[r.IntN(len(encodeSamples))] + encodeSamples[r.IntN(len(encodeSamples))], Metadata: metas[r.IntN(len(metas))],
		}
		switch r.IntN(3) {
		case 0:
			msg.Attachments = []Attachment{}
		case 1:
			for range 1 + r.IntN(3) {
				msg.Attachments = append(msg.Attachments, Attachment{FileURL: "http://h/f/" + encodeSamples[r.IntN(len(encodeSamples))],
					MimeType: "image/png", Size: r.Int64N(1 << 20), Width: r.IntN(4000), Height: r.IntN(4000), Hash: "abc"})
			}
		} // else nil, which marshal writes as [] as well
		d, err := draftMessage(msg)
		if err != nil {
			t.Fatal(err)
		}
		seq, at := r.Uint64N(1<<40), sampleTime(r)
		got, gotJSON := d.finish(seq, at)
		msg.Seq, msg.CreatedAt = seq, at
		want, err := marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(gotJSON, want) {
			t.Fatalf("case %d:\n got %s\nwant %s", i, gotJSON, want)
		}
		if got.Seq != seq || !got.CreatedAt.Equal(at.Time) || got.ID != msg.ID {
			t.Fatalf("case %d: finished message %+v does not match %+v", i, got, msg)
		}
	}
}

// TestDraftRefusesInvalidUTF8: text that is not UTF-8 fails to encode, as marshal fails.
func TestDraftRefusesInvalidUTF8(t *testing.T) {
	msg := Message{ID: "msg_x", ConversationID: "conv_x", Role: RoleUser, Text: "bad \xff byte", Metadata: MessageMetadata{Source: "widget"}}
	if _, err := marshal(msg); err == nil {
		t.Fatal("marshal accepted invalid UTF-8; this test's premise is gone")
	}
	if _, err := draftMessage(msg); err == nil {
		t.Fatal("draftMessage accepted invalid UTF-8")
	}
}
