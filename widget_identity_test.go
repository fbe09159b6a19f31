package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"testing"

	"github.com/awardee/awardee/engine"
)

func signUser(secret, userID string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(userID))
	return hex.EncodeToString(mac.Sum(nil))
}

func identitySecret(t *testing.T, ts *testServer, apiKey string) string {
	t.Helper()
	var s engine.IdentitySecret
	mustStatus(t, ts.do(t, "GET", "/org/identity-secret", apiKey, nil), 200).Decode(t, &s)
	return s.Secret
}

func openWidget(t *testing.T, ts *testServer, widgetKey string, body any, want int) engine.CreatedConversation {
	t.Helper()
	r := mustStatus(t, ts.do(t, "POST", "/widget/conversations", widgetKey, body), want)
	var out engine.CreatedConversation
	if want == 201 {
		r.Decode(t, &out)
	}
	return out
}

func TestVerifiedVisitorContinuesTheirConversation(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	secret := identitySecret(t, ts, org.APIKey)
	if again := identitySecret(t, ts, org.APIKey); again != secret || len(secret) < 20 {
		t.Fatalf("identity secret %q then %q", secret, again)
	}
	user := map[string]any{"user_id": "u-42", "user_hash": signUser(secret, "u-42"),
		"visitor": map[string]any{"name": "Ann", "email": "ann@example.com", "verified": false}}

	resume := map[string]any{"user_id": "u-42", "user_hash": signUser(secret, "u-42"), "resume_only": true}
	// A page load of a user without a thread opens nothing.
	openWidget(t, ts, org.WidgetKey, resume, 404)
	first := openWidget(t, ts, org.WidgetKey, user, 201)
	if again := openWidget(t, ts, org.WidgetKey, resume, 201); again.Conversation.ID != first.Conversation.ID {
		t.Fatalf("resume gave %s, not %s", again.Conversation.ID, first.Conversation.ID)
	}
	v := first.Conversation.Visitor
	if v.UserID == nil || *v.UserID != "u-42" || v.Verified == nil || !*v.Verified || v.Name == nil || *v.Name != "Ann" {
		t.Fatalf("visitor %+v", v)
	}
	// Another device: the same conversation with a token of its own; both tokens work.
	second := openWidget(t, ts, org.WidgetKey, user, 201)
	if second.Conversation.ID != first.Conversation.ID || second.VisitorToken == first.VisitorToken {
		t.Fatalf("second device got %s (token reused: %v)", second.Conversation.ID, second.VisitorToken == first.VisitorToken)
	}
	for _, tok := range []string{first.VisitorToken, second.VisitorToken} {
		mustStatus(t, ts.do(t, "POST", "/widget/conversations/"+first.Conversation.ID+"/messages", tok, `{"text":"hi"}`), 201)
	}
	// Another user, and an anonymous visitor, get conversations of their own.
	other := openWidget(t, ts, org.WidgetKey, map[string]any{"user_id": "u-7", "user_hash": signUser(secret, "u-7")}, 201)
	anon := openWidget(t, ts, org.WidgetKey, `{"visitor":{"name":"Bob"}}`, 201)
	if other.Conversation.ID == first.Conversation.ID || anon.Conversation.ID == first.Conversation.ID {
		t.Fatal("another visitor was handed the verified user's conversation")
	}
	if av := anon.Conversation.Visitor; av.UserID != nil || av.Verified == nil || *av.Verified {
		t.Fatalf("unproven visitor %+v", av)
	}
	// Once closed, the user starts afresh, and keeps the new one.
	closed := engine.StatusClosed
	mustStatus(t, ts.do(t, "PATCH", "/conversations/"+first.Conversation.ID, org.APIKey, map[string]any{"status": closed}), 200)
	third := openWidget(t, ts, org.WidgetKey, user, 201)
	fourth := openWidget(t, ts, org.WidgetKey, user, 201)
	if third.Conversation.ID == first.Conversation.ID || fourth.Conversation.ID != third.Conversation.ID {
		t.Fatalf("after close: %s then %s (closed %s)", third.Conversation.ID, fourth.Conversation.ID, first.Conversation.ID)
	}
}

func TestForgedUserHashIsRefused(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	otherOrg := ts.newOrg(t, 0, 0)
	secret := identitySecret(t, ts, org.APIKey)
	good := signUser(secret, "u-1")
	forged := []struct {
		name string
		body any
		want int
	}{
		{"another user's hash", map[string]any{"user_id": "u-2", "user_hash": good}, 401},
		{"another org's secret", map[string]any{"user_id": "u-1", "user_hash": signUser(identitySecret(t, ts, otherOrg.APIKey), "u-1")}, 401},
		{"not hex", map[string]any{"user_id": "u-1", "user_hash": "zz" + good[2:]}, 401},
		{"truncated", map[string]any{"user_id": "u-1", "user_hash": good[:32]}, 401},
		{"no hash", map[string]any{"user_id": "u-1"}, 401},
		{"empty hash", map[string]any{"user_id": "u-1", "user_hash": ""}, 401},
		{"hash without id", map[string]any{"user_hash": good}, 400},
		{"empty id", map[string]any{"user_id": "", "user_hash": signUser(secret, "")}, 400},
	}
	for _, tc := range forged {
		r := ts.do(t, "POST", "/widget/conversations", org.WidgetKey, tc.body)
		if r.Status != tc.want {
			t.Fatalf("%s: %d %s", tc.name, r.Status, r.Body)
		}
	}
	mustStatus(t, ts.do(t, "POST", "/widget/conversations", org.WidgetKey, map[string]any{"resume_only": true}), 400)
	// Nothing was opened by any of them, and a rotation retires the old hash at once.
	var list struct{ Data []json.RawMessage }
	mustStatus(t, ts.do(t, "GET", "/conversations", org.APIKey, nil), 200).Decode(t, &list)
	if len(list.Data) != 0 {
		t.Fatalf("%d conversations after refused opens", len(list.Data))
	}
	var rotated engine.IdentitySecret
	mustStatus(t, ts.do(t, "POST", "/org/identity-secret", org.APIKey, nil), 200).Decode(t, &rotated)
	if rotated.Secret == secret {
		t.Fatal("rotation kept the secret")
	}
	mustStatus(t, ts.do(t, "POST", "/widget/conversations", org.WidgetKey, map[string]any{"user_id": "u-1", "user_hash": good}), 401)
	openWidget(t, ts, org.WidgetKey, map[string]any{"user_id": "u-1", "user_hash": signUser(rotated.Secret, "u-1")}, 201)
	// The widget key cannot read the secret.
	mustStatus(t, ts.do(t, "GET", "/org/identity-secret", org.WidgetKey, nil), 403)
}
