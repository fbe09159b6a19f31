package engine

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestMember(tb testing.TB, db *DB, orgID, email string, role MemberRole) CreatedMember {
	tb.Helper()
	m, err := db.CreateMember(context.Background(), orgID, NewMember{Email: email, Name: "Member " + email, Role: role})
	if err != nil {
		tb.Fatalf("create member %s: %v", email, err)
	}
	return m
}

func TestMemberEmailIsUniqueCaseInsensitivelyAcrossOrgs(t *testing.T) {
	db := openTestDB(t)
	a, b := newTestOrg(t, db), newTestOrg(t, db)
	m := newTestMember(t, db, a.OrgID, "Ana@Example.com", RoleAdmin)
	if !ValidID(PrefixMember, m.Member.ID) || len(m.Password) != 20 || m.Member.Role != RoleAdmin {
		t.Fatalf("created %+v", m)
	}
	_, err := db.CreateMember(context.Background(), b.OrgID, NewMember{Email: "ana@EXAMPLE.com", Name: "Other"})
	wantCode(t, err, CodeValidation)
	for _, bad := range []NewMember{{Email: "not an email", Name: "x"}, {Email: "x@example.com", Name: " "}, {Email: "y@example.com", Name: "y", Role: "owner"}, {Email: "z@example.com", Name: "z", Password: "short"}} {
		_, err := db.CreateMember(context.Background(), a.OrgID, bad)
		wantCode(t, err, CodeValidation)
	}
	list, err := db.Members(a.OrgID)
	if err != nil || len(list) != 1 || list[0].ID != m.Member.ID {
		t.Fatalf("members of a: %+v, %v", list, err)
	}
	if list, _ := db.Members(b.OrgID); len(list) != 0 {
		t.Fatalf("members of b: %+v", list)
	}
}

func TestPasswordHashIsArgon2idAndNotThePassword(t *testing.T) {
	h := hashPassword("correct horse battery")
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") || strings.Contains(h, "correct") {
		t.Fatalf("hash %q", h)
	}
	if !checkPassword(h, "correct horse battery") || checkPassword(h, "correct horse batterY") {
		t.Fatal("checkPassword does not tell the right password from a wrong one")
	}
}

func TestSignInFailuresAreAlike(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	m := newTestMember(t, db, org.OrgID, "ana@example.com", RoleAgent)
	_, _, errEmail := db.SignIn(context.Background(), "nobody@example.com", m.Password)
	_, _, errPassword := db.SignIn(context.Background(), "ana@example.com", m.Password+"x")
	e1, e2 := wantCode(t, errEmail, CodeUnauthorized), wantCode(t, errPassword, CodeUnauthorized)
	if e1.Message != e2.Message {
		t.Fatalf("wrong email says %q, wrong password %q", e1.Message, e2.Message)
	}
	secret, s, err := db.SignIn(context.Background(), "ANA@example.com", m.Password)
	if err != nil || !strings.HasPrefix(secret, SecretSession) || s.Member.ID != m.Member.ID || s.CSRFToken == "" {
		t.Fatalf("sign in: %q %+v %v", secret, s, err)
	}
	who, _, err := db.AuthenticateSession(context.Background(), secret)
	if err != nil || who.Kind != KeyMember || who.MemberID != m.Member.ID || who.OrgID != org.OrgID {
		t.Fatalf("session principal %+v, %v", who, err)
	}
}

func TestSessionEndsWhenDisabledIdleOrOld(t *testing.T) {
	db, clock := openClockedDB(t)
	org := newTestOrg(t, db)
	m := newTestMember(t, db, org.OrgID, "ana@example.com", RoleAgent)
	signIn := func() string {
		t.Helper()
		secret, _, err := db.SignIn(context.Background(), "ana@example.com", m.Password)
		if err != nil {
			t.Fatal(err)
		}
		return secret
	}
	alive := func(secret string) bool {
		_, _, err := db.AuthenticateSession(context.Background(), secret)
		return err == nil
	}

	idle := signIn()
	clock.Advance(SessionIdle - time.Minute)
	if !alive(idle) {
		t.Fatal("a session used within 12 h ended")
	}
	clock.Advance(SessionIdle - time.Minute) // touched just now, so still alive
	if !alive(idle) {
		t.Fatal("a session kept in use ended before 30 days")
	}
	clock.Advance(SessionIdle)
	if alive(idle) {
		t.Fatal("a session idle for 12 h still works")
	}

	old := signIn()
	for range 3 * 24 * 30 {
		if clock.Advance(10 * time.Hour / 3); !alive(old) {
			break
		}
	}
	if alive(old) {
		t.Fatal("a session in use for 30 days still works")
	}

	s := signIn()
	disabled := true
	if _, err := db.UpdateMember(context.Background(), org.OrgID, m.Member.ID, MemberPatch{Disabled: &disabled}); err != nil {
		t.Fatal(err)
	}
	if alive(s) {
		t.Fatal("a disabled member's session still works")
	}
	if _, _, err := db.SignIn(context.Background(), "ana@example.com", m.Password); err == nil {
		t.Fatal("a disabled member signed in")
	}
}

func TestChangePasswordEndsOtherSessions(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	m := newTestMember(t, db, org.OrgID, "ana@example.com", RoleAgent)
	here, _, _ := db.SignIn(context.Background(), "ana@example.com", m.Password)
	there, _, _ := db.SignIn(context.Background(), "ana@example.com", m.Password)
	wantCode(t, db.ChangePassword(context.Background(), here, "wrong", "a new long password"), CodeValidation)
	if err := db.ChangePassword(context.Background(), here, m.Password, "a new long password"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.AuthenticateSession(context.Background(), here); err != nil {
		t.Fatalf("the session that changed the password ended: %v", err)
	}
	if _, _, err := db.AuthenticateSession(context.Background(), there); err == nil {
		t.Fatal("another session survived a password change")
	}
	if _, _, err := db.SignIn(context.Background(), "ana@example.com", m.Password); err == nil {
		t.Fatal("the old password still signs in")
	}
	if _, _, err := db.SignIn(context.Background(), "ana@example.com", "a new long password"); err != nil {
		t.Fatal(err)
	}
}

func TestRealtimeTokenIsSingleUseAndExpires(t *testing.T) {
	db, clock := openClockedDB(t)
	org := newTestOrg(t, db)
	m := newTestMember(t, db, org.OrgID, "ana@example.com", RoleAgent)
	secret, _, _ := db.SignIn(context.Background(), "ana@example.com", m.Password)
	who, _, _ := db.AuthenticateSession(context.Background(), secret)
	token, _ := db.IssueRealtimeToken(who)
	got, err := db.Authenticate(token)
	if err != nil || got.MemberID != m.Member.ID || got.OrgID != org.OrgID {
		t.Fatalf("first use: %+v %v", got, err)
	}
	if _, err := db.Authenticate(token); err == nil {
		t.Fatal("a realtime token worked twice")
	}
	late, _ := db.IssueRealtimeToken(who)
	clock.Advance(RealtimeTokenTTL)
	if _, err := db.Authenticate(late); err == nil {
		t.Fatal("a realtime token worked after 60 s")
	}
}

func TestRevokedKeyIsRefusedAtOnce(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	k, err := db.CreateAPIKey(context.Background(), org.OrgID, "ci")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Authenticate(k.APIKey); err != nil { // now cached
		t.Fatal(err)
	}
	keys, _ := db.APIKeys(org.OrgID)
	if len(keys) != 2 {
		t.Fatalf("keys %+v", keys)
	}
	wantCode(t, db.RevokeAPIKey(context.Background(), newTestOrg(t, db).OrgID, k.KeyID), CodeNotFound)
	if err := db.RevokeAPIKey(context.Background(), org.OrgID, k.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Authenticate(k.APIKey); err == nil {
		t.Fatal("a revoked key still authenticates from the cache")
	}
	if _, err := db.Authenticate(org.APIKey); err != nil {
		t.Fatal(err)
	}
}

func TestMemberReplyAssignsOnceUnderConcurrency(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	ana := newTestMember(t, db, org.OrgID, "ana@example.com", RoleAgent)
	bob := newTestMember(t, db, org.OrgID, "bob@example.com", RoleAgent)
	conv := newConv(t, db, org.OrgID, StatusAgentRequested)
	before := latestOffset(t, db, org.OrgID)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, m := range []CreatedMember{ana, bob} {
		wg.Go(func() {
			_, _, errs[i] = db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, MemberID: m.Member.ID, Text: "hello"}, nil)
		})
	}
	wg.Wait()
	won := 0
	var winner string
	for i, err := range errs {
		if err == nil {
			won++
			winner = []CreatedMember{ana, bob}[i].Member.ID
			continue
		}
		e := wantCode(t, err, CodeInvalidState)
		if e.Details["assignee"] == nil {
			t.Fatalf("refusal without details.assignee: %+v", e)
		}
	}
	if won != 1 {
		t.Fatalf("%d replies won, want 1: %v", won, errs)
	}
	got, _ := db.Conversation(org.OrgID, conv.ID)
	if got.Status != StatusOpen || got.Assignee == nil || *got.Assignee != winner {
		t.Fatalf("conversation %+v, want open assigned to %s", got, winner)
	}
	msgs := allMessages(t, db, org.OrgID, conv.ID)
	if len(msgs) != 2 || msgs[0].Role != RoleSystem || msgs[1].Metadata.Source != "dashboard" || msgs[1].Metadata.MemberID != winner {
		t.Fatalf("messages %+v", msgs)
	}
	evs := eventsAfter(t, db, org.OrgID, before)
	if len(evs) != 3 || evs[0].Type != EventConversationUpdated {
		t.Fatalf("events %+v", evs)
	}
	d := decodeData[ConversationUpdatedData](t, evs[0])
	if d.Changes["status"].To != string(StatusOpen) || d.Changes["assignee"].To != winner || d.Changes["assignee"].From != nil {
		t.Fatalf("changes %+v", d.Changes)
	}
	// The API's rule is unchanged: an API key replies to an assigned conversation.
	if _, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, APIKeyID: "key_x", Text: "api"}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestPatchAssigneeMustBeAMemberOfTheOrg(t *testing.T) {
	db := openTestDB(t)
	org, other := newTestOrg(t, db), newTestOrg(t, db)
	ana := newTestMember(t, db, org.OrgID, "ana@example.com", RoleAgent)
	stranger := newTestMember(t, db, other.OrgID, "eve@example.com", RoleAgent)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	for _, a := range []string{"alice", stranger.Member.ID} {
		_, _, err := db.UpdateConversation(context.Background(), org.OrgID, conv.ID, ConversationPatch{SetAssignee: true, Assignee: &a}, nil)
		wantCode(t, err, CodeValidation)
	}
	got, _, err := db.UpdateConversation(context.Background(), org.OrgID, conv.ID, ConversationPatch{SetAssignee: true, Assignee: &ana.Member.ID}, nil)
	if err != nil || got.Assignee == nil || *got.Assignee != ana.Member.ID {
		t.Fatalf("assign: %+v %v", got, err)
	}
}

func TestPruneSessionsDeletesOnlyEndedOnes(t *testing.T) {
	db, clock := openClockedDB(t)
	org := newTestOrg(t, db)
	m := newTestMember(t, db, org.OrgID, "ana@example.com", RoleAgent)
	old, _, _ := db.SignIn(context.Background(), "ana@example.com", m.Password)
	clock.Advance(SessionIdle)
	fresh, _, _ := db.SignIn(context.Background(), "ana@example.com", m.Password)
	n, err := db.PruneSessions(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want 1", n, err)
	}
	if _, _, err := db.AuthenticateSession(context.Background(), fresh); err != nil {
		t.Fatalf("the fresh session was pruned: %v", err)
	}
	if _, _, err := db.AuthenticateSession(context.Background(), old); err == nil {
		t.Fatal("the idle session still works")
	}
}
