package main

import (
	"github.com/awardee/awardee/engine"
)

// getIdentitySecret shows the org's identity secret, making it on first use, so a site can
// sign its users' ids for the widget.
func (s *server) getIdentitySecret(c *call) (any, error) {
	return s.db.IdentitySecret(c.engineCtx, c.orgID())
}

// rotateIdentitySecret replaces the identity secret; hashes made with the old one stop working.
func (s *server) rotateIdentitySecret(c *call) (any, error) {
	return answer(s.db.RotateIdentitySecret(c.engineCtx, c.orgID(), c.idem))
}

// verifiedUser reads identity verification from a widget's body. A user id without a valid
// hash is refused (401), never treated as anonymous: the page meant a signed-in user.
func verifiedUser(userID, userHash *string) (*engine.VerifiedUser, error) {
	switch {
	case userID == nil && userHash == nil:
		return nil, nil
	case userID == nil:
		return nil, engine.Errorf(engine.CodeValidation, "user_hash was sent without user_id").
			WithDetails(map[string]any{"field": "user_id"})
	case userHash == nil:
		return nil, engine.Errorf(engine.CodeUnauthorized, "user_id needs user_hash: the hex HMAC-SHA256 of the user id under the org's identity secret")
	}
	return &engine.VerifiedUser{ID: *userID, Hash: *userHash}, nil
}
