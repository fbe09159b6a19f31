package blobs

import (
	"bytes"
	"context"
	"io"
	"strconv"

	"github.com/valyala/fasthttp"
)

// Serve answers an HTTP GET for the blob named h as contentType: the bytes after they are checked
// against their hash, a strong ETag (the hash), 304 for a matching If-None-Match, immutable
// caching (a blob's name is its content, so it can never change), nosniff, and a single byte
// range (206, or 416 for a range outside the blob). It returns an error, having written nothing,
// when the blob cannot be served (ErrNotFound, ErrCorrupt, a read failure); the caller answers
// those in its own envelope. Whether the caller may see h at all is the caller's decision.
func (s *Store) Serve(ctx *fasthttp.RequestCtx, h Hash, contentType string) error {
	etag := `"` + h.String() + `"`
	if etagMatches(ctx.Request.Header.Peek("If-None-Match"), etag) {
		setImmutable(ctx, etag)
		ctx.SetStatusCode(fasthttp.StatusNotModified)
		return nil
	}
	blob, err := s.Open(context.WithoutCancel(ctx), h)
	if err != nil {
		return err
	}
	setImmutable(ctx, etag)
	size := blob.Size()
	offset, length := int64(0), size
	if r := ctx.Request.Header.Peek("Range"); len(r) > 0 && size > 0 {
		first, last, err := fasthttp.ParseByteRange(r, int(size))
		if err != nil {
			blob.Close()
			ctx.Response.Header.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			ctx.SetStatusCode(fasthttp.StatusRequestedRangeNotSatisfiable)
			return nil
		}
		offset, length = int64(first), int64(last-first+1)
		ctx.Response.Header.SetContentRange(first, last, int(size))
		ctx.SetStatusCode(fasthttp.StatusPartialContent)
	}
	ctx.SetContentType(contentType)
	// fasthttp closes the stream once it is sent (or the connection is gone).
	ctx.SetBodyStream(&sectionCloser{SectionReader: io.NewSectionReader(blob, offset, length), Closer: blob}, int(length))
	return nil
}

func setImmutable(ctx *fasthttp.RequestCtx, etag string) {
	h := &ctx.Response.Header
	h.Set("ETag", etag)
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Accept-Ranges", "bytes")
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
