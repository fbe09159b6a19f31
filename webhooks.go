package main

import (
	"context"
	"errors"
	"net"

	"github.com/awardee/awardee/blobs"
	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/hooks"
)

// Thin handlers of section 11: decode, call hooks, encode.

func (s *server) createWebhook(c *call) (any, error) {
	var in hooks.NewEndpoint
	if err := decodeJSON(c.ctx.PostBody(), &in, false); err != nil {
		return nil, err
	}
	return answer(s.hooks.Create(c.engineCtx, c.orgID(), in, c.idem))
}

func (s *server) listWebhooks(c *call) (any, error) { return s.hooks.List(c.orgID()) }

func (s *server) deleteWebhook(c *call) (any, error) {
	return s.hooks.Delete(c.engineCtx, c.orgID(), c.param("id"))
}

func (s *server) listDeliveries(c *call) (any, error) {
	limit, err := queryLimit(c.ctx)
	if err != nil {
		return nil, err
	}
	return s.hooks.Deliveries(c.orgID(), c.param("id"), string(c.ctx.QueryArgs().Peek("cursor")), limit)
}

func (s *server) retryDelivery(c *call) (any, error) {
	return s.hooks.Retry(c.engineCtx, c.orgID(), c.param("id"), c.param("delivery_id"))
}

// webhookGuard is the address rules of section 9, shared with attachment fetches: a URL is
// checked at registration, and every connection to a receiver again at connect time, after DNS.
func webhookGuard(cfg Config) (dial func(ctx context.Context, network, addr string) (net.Conn, error), check func(ctx context.Context, rawURL string) error) {
	guard := blobs.Guard{AllowPrivate: cfg.AllowPrivateNetworks}
	check = func(ctx context.Context, rawURL string) error {
		err := guard.CheckURL(ctx, rawURL)
		var refusal *blobs.Error
		if err == nil || !errors.As(err, &refusal) {
			return err
		}
		return engine.Errorf(engine.CodeInvalidPayload, "url: %s", refusal.Message).
			WithDetails(map[string]any{"field": "url", "reason": string(refusal.Reason)}).WithCause(refusal.Cause)
	}
	return guard.Dialer().DialContext, check
}
