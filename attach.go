package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"

	"github.com/awardee/awardee/blobs"
	"github.com/awardee/awardee/engine"
)

// attacher turns attachment URLs into stored assets: fetch, check, store, or a 422 with the
// offending URL. It runs before the commit, outside the write unit.
type attacher interface {
	Attach(ctx context.Context, orgID string, urls []string) ([]engine.Attachment, error)
}

// fetchAttacher fetches a message's attachments in parallel into the blob store. A blob whose
// message then fails to commit is an orphan the sweeper removes, never a wrong answer.
type fetchAttacher struct {
	fetcher   *blobs.Fetcher
	store     *blobs.Store
	publicURL string
	log       *slog.Logger
}

// Attach fetches every URL at once; the first refusal cancels the others and is the answer, and
// then nothing at all is stored for the message.
func (a *fetchAttacher) Attach(ctx context.Context, orgID string, urls []string) ([]engine.Attachment, error) {
	if len(urls) == 0 {
		return nil, nil
	}
	return a.fetchAll(ctx, orgID, urls)
}

// fetchAll is Attach's work, apart so that what its goroutines share is only allocated for a
// message that has attachments: captured by them, it lives on the heap.
func (a *fetchAttacher) fetchAll(ctx context.Context, orgID string, urls []string) ([]engine.Attachment, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := make([]engine.Attachment, len(urls))
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	for i, u := range urls {
		wg.Go(func() {
			asset, err := a.fetcher.FetchImage(ctx, a.store, u)
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
					cancel()
				}
				mu.Unlock()
				return
			}
			out[i] = engine.Attachment{
				FileURL: a.fileURL(orgID, asset.Hash.String(), asset.Ext), MimeType: asset.MIME,
				Size: asset.Size, Width: asset.Width, Height: asset.Height, Hash: asset.Hash.String(),
			}
		})
	}
	wg.Wait()
	if first != nil {
		return nil, attachmentError(first)
	}
	return out, nil
}

func (a *fetchAttacher) fileURL(orgID, hash, ext string) string {
	return strings.TrimSuffix(a.publicURL, "/") + "/files/" + orgID + "/" + hash + "." + ext
}

// attachmentError is a refusal's 422 with the URL as given and the contract's reason, or a 503
// for a failure of our own storage (the source is not at fault, and a retry may succeed).
func attachmentError(err error) error {
	var refusal *blobs.Error
	if !errors.As(err, &refusal) {
		return engine.Errorf(engine.CodeUnavailable, "the attachment could not be stored; nothing was posted").WithCause(err)
	}
	return engine.Errorf(engine.CodeInvalidPayload, "attachment %s: %s", refusal.URL, refusal.Message).
		WithDetails(map[string]any{"url": refusal.URL, "reason": string(refusal.Reason)}).WithCause(refusal.Cause)
}
