package main

import (
	_ "embed"
	"time"

	"github.com/awardee/awardee/web"
	"github.com/valyala/fasthttp"
)

// openAPIDocument describes the whole HTTP API of routes() in OpenAPI 3.1. Tests hold it to the
// router (every route in one is in the other) and to the running server's real answers.
//
//go:embed openapi.json
var openAPIDocument []byte

// openAPI serves the document at GET /openapi.json, public like the contract it restates. Its
// ETag is fixed per build, so clients revalidate with a 304 rather than refetch the whole.
func (s *server) openAPI() fasthttp.RequestHandler {
	doc := web.NewAsset("openapi.json", openAPIDocument, "public, no-cache")
	return func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		setRequestID(ctx)
		doc.Serve(ctx)
		s.metrics.observe("/openapi.json", ctx, start)
	}
}
