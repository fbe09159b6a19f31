package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
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
	etag := `"` + asset.Hash + `"`
	h := &ctx.Response.Header
	h.Set("ETag", etag)
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Accept-Ranges", "bytes")
	if etagMatches(ctx.Request.Header.Peek("If-None-Match"), etag) {
		ctx.SetStatusCode(fasthttp.StatusNotModified)
		return
	}
	blob, err := s.blobs.Open(context.WithoutCancel(ctx), hash)
	if err != nil {
		s.writeError(ctx, blobError(err))
		return
	}
	size := blob.Size()
	offset, length := int64(0), size
	if r := ctx.Request.Header.Peek("Range"); len(r) > 0 && size > 0 {
		first, last, err := fasthttp.ParseByteRange(r, int(size))
		if err != nil {
			blob.Close()
			h.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			s.writeError(ctx, engine.Errorf(engine.CodeValidation, "the Range header asks for no byte of this %d-byte file", size).
				WithDetails(map[string]any{"header": "Range"}))
			ctx.SetStatusCode(fasthttp.StatusRequestedRangeNotSatisfiable)
			return
		}
		offset, length = int64(first), int64(last-first+1)
		h.SetContentRange(first, last, int(size))
		ctx.SetStatusCode(fasthttp.StatusPartialContent)
	}
	ctx.SetContentType(asset.MimeType)
	ctx.SetBodyStream(&sectionCloser{SectionReader: io.NewSectionReader(blob, offset, length), Closer: blob}, int(length))
}

// sectionCloser streams part of a blob and closes the blob once fasthttp has sent it.
type sectionCloser struct {
	*io.SectionReader
	io.Closer
}

// etagMatches reports whether an If-None-Match list names etag (or is "*"); weak tags compare
// equal to strong ones, as RFC 9110 says for If-None-Match.
func etagMatches(header []byte, etag string) bool {
	for _, tag := range bytes.Split(header, []byte(",")) {
		tag = bytes.TrimPrefix(bytes.TrimSpace(tag), []byte("W/"))
		if string(tag) == "*" || string(tag) == etag {
			return true
		}
	}
	return false
}

// blobError keeps a corrupt or lost blob's details for the log: the client learns only that the
// file cannot be served now.
func blobError(err error) error {
	if errors.Is(err, blobs.ErrCorrupt) || errors.Is(err, blobs.ErrNotFound) {
		return engine.Errorf(engine.CodeUnavailable, "the file's stored bytes are damaged or missing; it cannot be served").WithCause(err)
	}
	return engine.Errorf(engine.CodeUnavailable, "the file cannot be read now").WithCause(err)
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
