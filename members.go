package main

import "github.com/awardee/awardee/engine"

// adminOnly lets API keys and admins' sessions through and refuses an agent's session with 403:
// members and keys are for those who run the team.
func adminOnly(h handler) handler {
	return func(c *call) (any, error) {
		if c.who.Kind == engine.KeyMember && c.who.Role != engine.RoleAdmin {
			return nil, engine.Errorf(engine.CodeForbidden, "only admins manage members and keys")
		}
		return h(c)
	}
}

func (s *server) createMember(c *call) (any, error) {
	var body struct {
		Email string            `json:"email"`
		Name  string            `json:"name"`
		Role  engine.MemberRole `json:"role"`
	}
	if err := decodeJSON(c.ctx.PostBody(), &body, false); err != nil {
		return nil, err
	}
	return s.db.CreateMember(c.engineCtx, c.orgID(), engine.NewMember{Email: body.Email, Name: body.Name, Role: body.Role})
}

func (s *server) listMembers(c *call) (any, error) {
	members, err := s.db.Members(c.orgID())
	if err != nil {
		return nil, err
	}
	return map[string]any{"data": members, "next_cursor": nil}, nil
}

func memberID(c *call) (string, error) {
	id := c.param("id")
	if !engine.ValidID(engine.PrefixMember, id) {
		return "", engine.Errorf(engine.CodeNotFound, "member not found")
	}
	return id, nil
}

func (s *server) patchMember(c *call) (any, error) {
	id, err := memberID(c)
	if err != nil {
		return nil, err
	}
	var body struct {
		Name     *string            `json:"name"`
		Role     *engine.MemberRole `json:"role"`
		Disabled *bool              `json:"disabled"`
	}
	if err := decodeJSON(c.ctx.PostBody(), &body, false); err != nil {
		return nil, err
	}
	patch := engine.MemberPatch{Name: body.Name, Role: body.Role, Disabled: body.Disabled}
	m, err := s.db.UpdateMember(c.engineCtx, c.orgID(), id, patch)
	if err != nil {
		return nil, err
	}
	if m.Disabled {
		s.hub.Disconnect(c.orgID(), func(p engine.Principal) bool { return p.MemberID == m.ID })
	}
	return m, nil
}
