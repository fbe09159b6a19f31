package main

import "github.com/awardee/awardee/engine"

func (s *server) listKeys(c *call) (any, error) {
	keys, err := s.db.APIKeys(c.orgID())
	if err != nil {
		return nil, err
	}
	return map[string]any{"data": keys, "next_cursor": nil}, nil
}

func (s *server) createKey(c *call) (any, error) {
	var body struct {
		Name string `json:"name"`
	}
	if err := decodeJSON(c.ctx.PostBody(), &body, true); err != nil {
		return nil, err
	}
	if len([]rune(body.Name)) > 200 {
		return nil, engine.Errorf(engine.CodeValidation, "name must be at most 200 characters").WithDetails(map[string]any{"field": "name"})
	}
	return s.db.CreateAPIKey(c.engineCtx, c.orgID(), body.Name)
}

// deleteKey revokes an API key: the engine refuses it from now on, and its open WebSockets are
// closed with 4001 before the answer.
func (s *server) deleteKey(c *call) (any, error) {
	id := c.param("id")
	if !engine.ValidID(engine.PrefixKey, id) {
		return nil, engine.Errorf(engine.CodeNotFound, "key not found")
	}
	if err := s.db.RevokeAPIKey(c.engineCtx, c.orgID(), id); err != nil {
		return nil, err
	}
	s.hub.Disconnect(c.orgID(), func(p engine.Principal) bool { return p.KeyID == id })
	return map[string]any{"id": id, "deleted": true}, nil
}
