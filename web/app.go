// Package web serves the dashboard's static files, embedded in the binary. The dashboard is a
// client of the public HTTP API and /realtime like any integration: this package knows nothing of
// the engine, and it never reads or writes data.
package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"path"
	"strings"

	"github.com/valyala/fasthttp"
)

//go:embed app
var appFiles embed.FS

// appCSP allows the dashboard its own origin and nothing else: no inline script or style, no
// eval, no other host for scripts, styles, connections (the API and /realtime), images or frames.
const appCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

type file struct {
	body, gzipped []byte
	etag, ctype   string
}

// App serves the dashboard under a path prefix ("/app/"). Files are compressed and hashed once,
// when it is made, so a request costs a map lookup and a write.
type App struct {
	prefix string
	files  map[string]*file
	// NotFound answers a path under the prefix that names no file, so the caller can answer in
	// its API's error shape; nil answers a plain 404.
	NotFound fasthttp.RequestHandler
}

// NewApp reads the embedded dashboard.
func NewApp(prefix string) *App {
	a := &App{prefix: prefix, files: map[string]*file{}}
	root, _ := fs.Sub(appFiles, "app")
	fs.WalkDir(root, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(root, name)
		if err != nil {
			return err
		}
		var gz bytes.Buffer
		w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		w.Write(body)
		w.Close()
		sum := sha256.Sum256(body)
		ctype := mime.TypeByExtension(path.Ext(name))
		if strings.HasSuffix(name, ".js") {
			ctype = "text/javascript; charset=utf-8" // modules need a JavaScript type whatever the host's mime table says
		}
		a.files[name] = &file{body: body, gzipped: gz.Bytes(), etag: `"` + hex.EncodeToString(sum[:12]) + `"`, ctype: ctype}
		return nil
	})
	return a
}

// Names lists the served files, for tests and size reports.
func (a *App) Names() []string {
	out := make([]string, 0, len(a.files))
	for name := range a.files {
		out = append(out, name)
	}
	return out
}

// GzippedSize is the bytes a browser transfers for one file with gzip.
func (a *App) GzippedSize(name string) int {
	if f := a.files[name]; f != nil {
		return len(f.gzipped)
	}
	return 0
}

// Serve answers a GET for a path under the prefix; the prefix itself is index.html. Every file
// is revalidated (no-cache with an ETag), so a new binary's dashboard loads at once.
func (a *App) Serve(ctx *fasthttp.RequestCtx) {
	if string(ctx.Path())+"/" == a.prefix {
		ctx.Redirect(a.prefix, fasthttp.StatusMovedPermanently)
		return
	}
	name := strings.TrimPrefix(string(ctx.Path()), a.prefix)
	if name == "" {
		name = "index.html"
	}
	f := a.files[name]
	if f == nil {
		if a.NotFound != nil {
			a.NotFound(ctx)
			return
		}
		ctx.Error("not found", fasthttp.StatusNotFound)
		return
	}
	h := &ctx.Response.Header
	h.Set("Content-Security-Policy", appCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", f.etag)
	h.Set("Vary", "Accept-Encoding")
	if bytes.Contains(ctx.Request.Header.Peek("If-None-Match"), []byte(f.etag)) {
		ctx.SetStatusCode(fasthttp.StatusNotModified)
		return
	}
	h.SetContentType(f.ctype)
	if bytes.Contains(ctx.Request.Header.Peek("Accept-Encoding"), []byte("gzip")) {
		h.Set("Content-Encoding", "gzip")
		ctx.SetBody(f.gzipped)
		return
	}
	ctx.SetBody(f.body)
}
