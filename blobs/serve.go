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
// range (206, or 416 for one that starts past the end; a Range it does not support, such as
// several ranges or another unit, is ignored as RFC 9110 allows: 200 with every byte). Only
// 200, 206 and 304 carry the year-long caching; a 416 is no-store, so no shared cache keeps a
// refusal under the file's URL. It returns an error, having written nothing,
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
	size := blob.Size()
	offset, length := int64(0), size
	switch first, last, ok := byteRange(ctx.Request.Header.Peek("Range"), size); {
	case !ok:
		blob.Close()
		ctx.Response.Header.Set("Cache-Control", "no-store")
		ctx.Response.Header.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
		ctx.SetStatusCode(fasthttp.StatusRequestedRangeNotSatisfiable)
		return nil
	case first >= 0:
		setImmutable(ctx, etag)
		offset, length = first, last-first+1
		ctx.Response.Header.SetContentRange(int(first), int(last), int(size))
		ctx.SetStatusCode(fasthttp.StatusPartialContent)
	default:
		setImmutable(ctx, etag)
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

// byteRange reads a Range header for a blob of size bytes. It returns the one range to send
// (first ≥ 0), or first < 0 to send the whole blob (no header, or one this server ignores:
// another unit, several ranges, bad syntax), or ok false for a single bytes range that no byte
// of the blob satisfies.
func byteRange(header []byte, size int64) (first, last int64, ok bool) {
	spec, found := bytes.CutPrefix(bytes.TrimSpace(header), []byte("bytes="))
	if !found || bytes.IndexByte(spec, ',') >= 0 {
		return -1, -1, true
	}
	from, to, found := bytes.Cut(bytes.TrimSpace(spec), []byte("-"))
	if !found {
		return -1, -1, true
	}
	parse := func(b []byte) (int64, bool) {
		if len(b) == 0 {
			return 0, false
		}
		n, err := strconv.ParseInt(string(b), 10, 64)
		return n, err == nil && n >= 0
	}
	if len(from) == 0 { // a suffix: the last n bytes
		n, valid := parse(to)
		if !valid {
			return -1, -1, true
		}
		if n == 0 || size == 0 {
			return -1, -1, false
		}
		return max(0, size-n), size - 1, true
	}
	start, valid := parse(from)
	if !valid {
		return -1, -1, true
	}
	end := size - 1
	if len(to) > 0 {
		e, valid := parse(to)
		if !valid || e < start {
			return -1, -1, true
		}
		end = min(e, size-1)
	}
	if start >= size {
		return -1, -1, false
	}
	return start, end, true
}
