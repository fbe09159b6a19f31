package main

import (
	"context"
	"net/url"

	"github.com/awardee/awardee/engine"
)

// attacher turns attachment URLs into stored assets: fetch, check, store, or a 422 with the
// offending URL. It runs before the commit, outside the write unit.
type attacher interface {
	Attach(ctx context.Context, orgID string, urls []string) ([]engine.Attachment, error)
}

// refuseAttachments is the attacher until the blob store lands: it applies the scheme rule and
// refuses every fetch, so a message with attachments is never stored without them.
type refuseAttachments struct{}

func (refuseAttachments) Attach(_ context.Context, _ string, urls []string) ([]engine.Attachment, error) {
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, attachmentError(raw, "scheme", "attachment URLs must be absolute http or https URLs")
		}
	}
	if len(urls) > 0 {
		return nil, attachmentError(urls[0], "fetch_failed", "this server does not fetch attachments yet")
	}
	return nil, nil
}

func attachmentError(rawURL, reason, message string) error {
	return engine.Errorf(engine.CodeInvalidPayload, "%s", message).
		WithDetails(map[string]any{"url": rawURL, "reason": reason})
}
