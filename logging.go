package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/fasthttp/router"
	"github.com/valyala/fasthttp"
)

// The log is for operators, on stderr, and never holds a secret: no key, token, password, cookie
// or CSRF token is ever passed to it, and as a second line of defence every value is scrubbed of
// anything shaped like one of our secrets and of the credentials a URL can carry (userinfo, query
// strings such as a presigned URL's signature), since an attachment's or a webhook's URL reaches
// the log inside the errors of its fetch. The first start's banner, which shows the new org's
// keys and the admin's password once on purpose, goes to stdout and never through the log.

var logFormats = []string{"text", "json"}

func parseLogFormat(s string) (string, error) {
	for _, f := range logFormats {
		if s == f {
			return f, nil
		}
	}
	return "", fmt.Errorf("--log-format %q: use text or json", s)
}

func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level %q: use debug, info, warn or error", s)
}

// newLogger is the server's logger on w, in the configured format and level (validated before).
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	lvl, err := parseLogLevel(level)
	if err != nil {
		return nil, err
	}
	if _, err := parseLogFormat(format); err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: scrubAttr}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// scrubAttr rewrites a value that holds something secret-shaped; anything else passes as it is.
func scrubAttr(_ []string, a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); mayHoldSecret(s) {
			a.Value = slog.StringValue(scrub(s))
		}
	case slog.KindAny:
		var s string
		switch v := a.Value.Any().(type) {
		case error:
			s = v.Error()
		case fmt.Stringer:
			s = v.String()
		default:
			s = fmt.Sprintf("%+v", v)
		}
		if mayHoldSecret(s) {
			if clean := scrub(s); clean != s {
				a.Value = slog.StringValue(clean)
			}
		}
	}
	return a
}

// secretShaped matches our secrets by their prefixes (engine's Secret* constants, and webhook
// signing secrets): the prefix stays, so a reader still sees what kind of secret was there.
var secretShaped = regexp.MustCompile(`\b(ak|wk|vt|as|rtt|ids|whsec)_[A-Za-z0-9+/=_-]{8,}`)

// urlShaped matches an absolute URL up to the first character that cannot be in one unquoted.
var urlShaped = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>\x60]+`)

const redacted = "REDACTED"

func mayHoldSecret(s string) bool {
	return strings.Contains(s, "_") || strings.Contains(s, "://")
}

func scrub(s string) string {
	s = urlShaped.ReplaceAllStringFunc(s, scrubURL)
	return secretShaped.ReplaceAllString(s, "${1}_"+redacted)
}

// scrubURL keeps a URL's scheme, host and path and drops what carries credentials. Punctuation
// that ends it is taken as the sentence's, not the URL's.
func scrubURL(match string) string {
	raw := strings.TrimRight(match, ".,:;!)]")
	return scrubbedURL(raw) + match[len(raw):]
}

func scrubbedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		// Unparseable: keep what precedes anything that could carry a credential.
		if i := strings.IndexAny(raw, "?#@"); i >= 0 {
			return raw[:i] + "?" + redacted
		}
		return raw
	}
	if u.User != nil {
		u.User = url.User(redacted)
	}
	if u.RawQuery != "" || u.ForceQuery {
		u.RawQuery = redacted
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// logRequest writes a request's one line, at debug level. It names the route's pattern
// (/conversations/{id}), not the path as sent: the pattern groups a route's lines, and neither the
// ids in a path nor a query string (/demo?key=wk_…) belong in the log.
func (s *server) logRequest(ctx *fasthttp.RequestCtx, route string, start time.Time) {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	s.log.LogAttrs(context.Background(), slog.LevelDebug, "request",
		slog.String("request_id", requestID(ctx)),
		slog.String("method", methodLabel(ctx.Method())),
		slog.String("route", route),
		slog.Int("status", ctx.Response.StatusCode()),
		slog.Duration("latency", time.Since(start)))
}

// matchedRoute is the pattern the router matched for ctx (saved only while debug logging is
// on: see routes), or "unmatched".
func matchedRoute(ctx *fasthttp.RequestCtx) string {
	if p, ok := ctx.UserValue(router.MatchedRoutePathParam).(string); ok {
		return p
	}
	return "unmatched"
}
