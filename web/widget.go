package web

import (
	"bytes"
	"embed"
	"html/template"
	"regexp"

	"github.com/valyala/fasthttp"
)

//go:embed widget.js demo.html demo.css
var widgetFiles embed.FS

// Widget serves the visitor's chat widget and its demo page.
type Widget struct {
	script  *Asset
	demoCSS *Asset
	demo    *template.Template
}

// NewWidget prepares the widget's files; it fails only if the binary was built without them.
func NewWidget() (*Widget, error) {
	// The script's URL is fixed (sites paste it once), so caches must revalidate: the strong
	// ETag makes that a 304 until a new build changes the bytes.
	script, err := LoadAsset(widgetFiles, "widget.js", "public, max-age=300, stale-while-revalidate=86400")
	if err != nil {
		return nil, err
	}
	css, err := LoadAsset(widgetFiles, "demo.css", "public, max-age=300")
	if err != nil {
		return nil, err
	}
	page, err := template.ParseFS(widgetFiles, "demo.html")
	if err != nil {
		return nil, err
	}
	return &Widget{script: script, demoCSS: css, demo: page}, nil
}

// Script is the asset behind GET /widget.js, for tests and size checks.
func (w *Widget) Script() *Asset { return w.script }

// ServeScript answers GET /widget.js: public, cacheable, gzipped when accepted.
func (w *Widget) ServeScript(ctx *fasthttp.RequestCtx) {
	// Any site may embed it; CORS lets a page load it as a module or check its integrity.
	ctx.Response.Header.Set("Access-Control-Allow-Origin", "*")
	ctx.Response.Header.Set("Cross-Origin-Resource-Policy", "cross-origin")
	w.script.Serve(ctx)
}

// ServeDemoCSS answers GET /demo.css, the demo page's own stylesheet.
func (w *Widget) ServeDemoCSS(ctx *fasthttp.RequestCtx) { w.demoCSS.Serve(ctx) }

var widgetKeyShape = regexp.MustCompile(`^wk_[a-z2-7]{1,64}$`)

// ServeDemo answers GET /demo?key=wk_…: a page that embeds the widget with that key, under
// the strict Content-Security-Policy the widget promises to work with. The key is public (it is
// in every page that embeds the widget), so carrying it in the address exposes nothing.
func (w *Widget) ServeDemo(ctx *fasthttp.RequestCtx) {
	key := string(ctx.QueryArgs().Peek("key"))
	if !widgetKeyShape.MatchString(key) {
		key = ""
	}
	origin := string(ctx.URI().Scheme()) + "://" + string(ctx.Host())
	var page bytes.Buffer
	if err := w.demo.Execute(&page, struct{ Key, Origin string }{key, origin}); err != nil {
		ctx.Error("the demo page could not be rendered", fasthttp.StatusInternalServerError)
		return
	}
	h := &ctx.Response.Header
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.SetContentType("text/html; charset=utf-8")
	ctx.SetBody(page.Bytes())
}
