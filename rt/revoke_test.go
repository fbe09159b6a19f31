package rt

import (
	"context"
	"testing"

	"github.com/awardee/awardee/engine"
)

func TestDisconnectClosesMatchingSocketsOnly(t *testing.T) {
	th := newTestHub(t, Options{})
	org := th.newOrg(t)
	other, err := th.db.CreateAPIKey(context.Background(), org.OrgID, "other")
	if err != nil {
		t.Fatal(err)
	}
	revoked, kept := th.dial(t), th.dial(t)
	revoked.auth(org.APIKey, -1)
	kept.auth(other.APIKey, -1)
	revoked.expectType("ready")
	kept.expectType("ready")
	victim, _ := th.db.Authenticate(org.APIKey)
	if n := th.hub.Disconnect(org.OrgID, func(p engine.Principal) bool { return p.KeyID == victim.KeyID }); n != 1 {
		t.Fatalf("closed %d sockets, want 1", n)
	}
	if got := revoked.expectClose(CloseUnauthorized); len(got) != 1 || got[0].Type != "error" {
		t.Fatalf("frames before the close: %+v", got)
	}
	conv := th.newConv(t, org.OrgID, engine.StatusOpen)
	th.post(t, org.OrgID, conv.Conversation.ID, "still here")
	kept.expectType("new_message")
}

// TestRevocationDuringAuthenticationIsNotMissed: a socket whose token was checked just before
// a revocation, and that attaches just after Disconnect ran, is refused too.
func TestRevocationDuringAuthenticationIsNotMissed(t *testing.T) {
	th := newTestHub(t, Options{})
	org := th.newOrg(t)
	victim, _ := th.db.Authenticate(org.APIKey)
	th.hub.beforeAttach = func() {
		th.hub.Disconnect(org.OrgID, func(p engine.Principal) bool { return p.KeyID == victim.KeyID })
	}
	c := th.dial(t)
	c.auth(org.APIKey, -1)
	c.expectClose(CloseUnauthorized)
}
