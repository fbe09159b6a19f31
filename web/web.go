// Package web serves the browser clients of the server: the visitor's chat widget and the
// team's dashboard. They are plain HTML, CSS and JavaScript embedded in the binary, so building
// needs Go alone. They are clients of the public HTTP API and /realtime like any integration:
// this package imports nothing of the engine and never reads the database.
//
// Every file is served through an Asset: its bytes, their gzip encoding and a strong ETag
// (a hash of the bytes) are computed once, when the Asset is made, never per request.
package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io/fs"
	"mime"
	"path"

	"github.com/valyala/fasthttp"
)

// Asset is one static file, ready to serve: its plain and gzipped bytes and their ETags are
// fixed at creation, so serving it costs no hashing and no compression.
type Asset struct {
	Name         string // the file's name, for logs and tests
	ContentType  string
	CacheControl string
	body         []byte
	gzipped      []byte // nil when gzip would not make it smaller
	etag         string // strong: a hash of body
	gzipETag     string // strong too: the gzip encoding is a different representation
}

// NewAsset prepares body for serving. The content type follows the name's extension;
// cacheControl is sent as is ("no-cache" makes every use revalidate with If-None-Match).
func NewAsset(name string, body []byte, cacheControl string) *Asset {
	sum := sha256.Sum256(body)
	tag := base64.RawURLEncoding.EncodeToString(sum[:18])
	a := &Asset{
		Name:         name,
		ContentType:  contentType(name),
		CacheControl: cacheControl,
		body:         body,
		etag:         `"` + tag + `"`,
		gzipETag:     `"` + tag + `-gz"`,
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write(body)
	zw.Close()
	if buf.Len() < len(body) {
		a.gzipped = buf.Bytes()
	}
	return a
}

// LoadAsset reads name from fsys (an embed.FS) and prepares it; a missing file is a build
// mistake, reported as an error at start rather than a 404 at run time.
func LoadAsset(fsys fs.FS, name, cacheControl string) (*Asset, error) {
	body, err := fs.ReadFile(fsys, name)
	if err != nil {
		return nil, fmt.Errorf("web: embedded file %s: %w", name, err)
	}
	return NewAsset(path.Base(name), body, cacheControl), nil
}

// Body returns the plain bytes (shared: do not modify).
func (a *Asset) Body() []byte { return a.body }

// Gzipped returns the gzip encoding as served, or the plain bytes when gzip does not help.
func (a *Asset) Gzipped() []byte {
	if a.gzipped == nil {
		return a.body
	}
	return a.gzipped
}

// ETag returns the strong ETag of the plain bytes.
func (a *Asset) ETag() string { return a.etag }

// Serve answers a GET (or HEAD) for the asset: 304 when If-None-Match names the representation
// the client would get, gzip when the client accepts it, and Vary so shared caches keep both.
func (a *Asset) Serve(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	body, etag := a.body, a.etag
	if a.gzipped != nil && ctx.Request.Header.HasAcceptEncoding("gzip") {
		body, etag = a.gzipped, a.gzipETag
		h.Set("Content-Encoding", "gzip")
	}
	if a.gzipped != nil {
		h.Set("Vary", "Accept-Encoding")
	}
	h.Set("ETag", etag)
	h.Set("Cache-Control", a.CacheControl)
	h.Set("X-Content-Type-Options", "nosniff")
	if inm := ctx.Request.Header.Peek("If-None-Match"); len(inm) > 0 && matchesETag(inm, etag) {
		h.Del("Content-Encoding")
		ctx.SetStatusCode(fasthttp.StatusNotModified)
		return
	}
	h.SetContentType(a.ContentType)
	ctx.SetStatusCode(fasthttp.StatusOK)
	if ctx.IsHead() {
		h.SetContentLength(len(body))
		return
	}
	ctx.SetBody(body)
}

// matchesETag reports whether an If-None-Match list names etag (or is "*"). Comparison is
// weak, as RFC 9110 says for If-None-Match: W/"x" matches "x".
func matchesETag(list []byte, etag string) bool {
	for _, part := range bytes.Split(list, []byte(",")) {
		part = bytes.TrimSpace(part)
		if string(part) == "*" {
			return true
		}
		part = bytes.TrimPrefix(part, []byte("W/"))
		if string(part) == etag {
			return true
		}
	}
	return false
}

func contentType(name string) string {
	switch path.Ext(name) {
	case ".js", ".mjs":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".html":
		return "text/html; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	}
	if t := mime.TypeByExtension(path.Ext(name)); t != "" {
		return t
	}
	return "application/octet-stream"
}
