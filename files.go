package main

import (
	"context"
	"errors"
	"runtime/debug"
	"strings"
	"time"

	"github.com/awardee/awardee/blobs"
	"github.com/awardee/awardee/engine"
	"github.com/valyala/fasthttp"
)

// extOf is the file extension of each accepted image type, as file URLs name it.
var extOf = map[string]string{"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}

// serveFile answers GET /files/{org}/{hash}.{ext}: public, because a visitor's chat window and a
// webhook receiver render file_url without a key, and safe to be public because the hash (256
// bits of the bytes) is only known to whoever was shown the message. A hash this org has not
// stored is 404 even when another org has it; the bytes are verified against their hash before
// any is served.
func (s *server) serveFile(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	setRequestID(ctx)
	s.serveFileBody(ctx)
	s.metrics.observe("/files", ctx, start)
}

func (s *server) serveFileBody(ctx *fasthttp.RequestCtx) {
	orgID, _ := ctx.UserValue("org").(string)
	name, _ := ctx.UserValue("file").(string)
	hexHash, ext, ok := strings.Cut(name, ".")
	notFound := engine.Errorf(engine.CodeNotFound, "file not found")
	if !ok || !engine.ValidID(engine.PrefixOrg, orgID) {
		s.writeError(ctx, notFound)
		return
	}
	asset, err := s.db.Asset(orgID, hexHash)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	if extOf[asset.MimeType] != ext {
		s.writeError(ctx, notFound)
		return
	}
	hash, err := blobs.ParseHash(asset.Hash)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	if err := s.blobs.Serve(ctx, hash, asset.MimeType); err != nil {
		s.writeError(ctx, blobError(err))
	}
}

// blobError keeps a corrupt or lost blob's details for the log: the client learns only that the
// file cannot be served now.
func blobError(err error) error {
	if errors.Is(err, blobs.ErrCorrupt) || errors.Is(err, blobs.ErrNotFound) {
		return engine.Errorf(engine.CodeUnavailable, "the file's stored bytes are damaged or missing; it cannot be served").WithCause(err)
	}
	return engine.Errorf(engine.CodeUnavailable, "the file cannot be read now").WithCause(err)
}

// sweepOrphansOnce runs one orphan sweep and logs its outcome; a panic (a bug, or a file system
// gone wrong) is logged with its stack and the next tick tries again, rather than taking the
// server down.
func (s *server) sweepOrphansOnce(ctx context.Context) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("sweep panicked", "what", "orphan blobs", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	if n, err := s.sweepOrphanBlobs(ctx); err != nil && ctx.Err() == nil {
		s.log.Error("sweep failed", "what", "orphan blobs", "err", err)
	} else if n > 0 {
		s.log.Info("deleted orphan blobs", "count", n)
	}
}

// sweepOrphanBlobs deletes stored blobs that no org's library references: left by a message that
// fetched its attachments and then failed to commit, or by a crash between the two. The store
// refuses to delete a blob put within its grace period, so a message about to commit keeps its.
func (s *server) sweepOrphanBlobs(ctx context.Context) (int, error) {
	deleted := 0
	err := s.blobs.Walk(ctx, func(info blobs.Info) error {
		used, err := s.db.BlobReferenced(info.Hash.String())
		if err != nil || used {
			return err
		}
		switch err := s.blobs.Delete(info.Hash); {
		case err == nil:
			deleted++
		case !errors.Is(err, blobs.ErrRecentlyCommitted) && !errors.Is(err, blobs.ErrNotFound):
			return err
		}
		return ctx.Err()
	})
	return deleted, err
}
