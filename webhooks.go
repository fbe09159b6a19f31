package main

import (
	"context"
	"encoding/json"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/hooks"
)

// Thin handlers of section 11: decode, call hooks, encode.

func (s *server) createWebhook(c *call) (any, error) {
	var in hooks.NewEndpoint
	if err := decodeJSON(c.ctx.PostBody(), &in, false); err != nil {
		return nil, err
	}
	ep, err := s.hooks.Create(c.engineCtx, c.orgID(), in)
	if err != nil || c.idem == nil {
		return ep, err
	}
	// The endpoint and its stored outcome are two writes: a crash between them lets a retry
	// with the same key register a second endpoint, which the caller can delete.
	body, err := json.Marshal(ep)
	if err != nil {
		return nil, err
	}
	if err := s.db.SaveOutcome(c.engineCtx, c.orgID(), c.idem, c.idem.Status, body); err != nil {
		s.log.Warn("idempotency outcome not stored", "request_id", requestID(c.ctx), "err", err)
	}
	return ep, nil
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

// checkWebhookScheme is the registration check until the shared address rules of section 9
// are wired in: only absolute http and https URLs are taken.
func checkWebhookScheme(_ context.Context, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return engine.Errorf(engine.CodeInvalidPayload, "url must be an absolute http or https URL").
			WithDetails(map[string]any{"field": "url", "reason": "scheme"})
	}
	if strings.ContainsAny(u.Host, " \t") {
		return engine.Errorf(engine.CodeInvalidPayload, "url has an invalid host").
			WithDetails(map[string]any{"field": "url", "reason": "unsafe_host"})
	}
	return nil
}

// webhookDialer opens receivers' connections; the connect-time address rules plug in here.
func webhookDialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
}
