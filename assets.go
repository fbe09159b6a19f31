package main

import (
	"encoding/hex"

	"github.com/awardee/awardee/engine"
)

// listAssets pages the org's asset library (GET /assets), in hash order.
func (s *server) listAssets(c *call) (any, error) {
	limit, err := queryLimit(c.ctx)
	if err != nil {
		return nil, err
	}
	listName := cursorList(c, "")
	var after []byte
	if raw := c.ctx.QueryArgs().Peek("cursor"); len(raw) > 0 {
		if after, err = s.db.OpenCursor(listName, string(raw)); err != nil {
			return nil, err
		}
	}
	assets, more, err := s.db.ListAssets(c.orgID(), after, limit)
	if err != nil {
		return nil, err
	}
	page := list[engine.Asset]{Data: assets}
	if more {
		last, err := hex.DecodeString(assets[len(assets)-1].Hash)
		if err != nil {
			return nil, err
		}
		sealed := s.db.SealCursor(listName, last)
		page.NextCursor = &sealed
	}
	return page, nil
}

// usage is what the org is billed for (GET /usage): each distinct asset once.
func (s *server) usage(c *call) (any, error) {
	return s.db.Usage(c.orgID())
}
