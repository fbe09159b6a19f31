package blobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Fetch limits of the contract.
const (
	DefaultTimeout      = 15 * time.Second
	DefaultMaxBytes     = 15 << 20
	DefaultMaxRedirects = 5
	UserAgent           = "Awardee/1 (+image fetcher)"
)

// FetchOptions tune a Fetcher; zero fields take the contract's defaults.
type FetchOptions struct {
	// AllowPrivate lifts the address rules only (see Guard). For development and tests.
	AllowPrivate bool
	// Timeout bounds the whole fetch: connecting, every redirect and the body.
	Timeout time.Duration
	// MaxBytes is the most a body may hold; reading stops at MaxBytes+1.
	MaxBytes int64
	// MaxRedirects is how many redirects are followed; one more is ReasonFetchFailed.
	MaxRedirects int
}

// Fetcher downloads attachment images under the contract's rules: http and https only, every
// connection checked by Guard after DNS, at most MaxRedirects redirects (each checked again), one
// deadline for everything, at most MaxBytes read, and no credentials of any kind sent: no
// userinfo from the URL, no cookies, no Referer, no header of ours but User-Agent and Accept.
// A Fetcher is safe for concurrent use; connections are pooled across calls.
type Fetcher struct {
	opts   FetchOptions
	guard  Guard
	client *http.Client
	bufs   sync.Pool
}

// NewFetcher returns a Fetcher with its own guarded transport.
func NewFetcher(opts FetchOptions) *Fetcher {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxRedirects <= 0 {
		opts.MaxRedirects = DefaultMaxRedirects
	}
	f := &Fetcher{opts: opts, guard: Guard{AllowPrivate: opts.AllowPrivate}}
	f.bufs.New = func() any { b := make([]byte, 256<<10); return &b }
	f.client = &http.Client{
		Transport:     f.guard.Transport(),
		CheckRedirect: f.checkRedirect,
		// No Jar: cookies a source sets are never sent back, not even to itself.
	}
	return f
}

// Close releases idle connections.
func (f *Fetcher) Close() { f.client.CloseIdleConnections() }

// checkRedirect re-applies every rule to the next hop before it is requested; the dialer
// checks its addresses again when it connects.
func (f *Fetcher) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > f.opts.MaxRedirects {
		return &Error{Reason: ReasonFetchFailed, Message: fmt.Sprintf("the source redirected more than %d times", f.opts.MaxRedirects), Cause: fmt.Errorf("redirect %d to %s", len(via), req.URL.Redacted())}
	}
	u, err := checkScheme(req.URL.String())
	if err != nil {
		return err
	}
	if _, _, err := f.guard.checkHost(u); err != nil {
		return err
	}
	req.URL.User = nil
	for _, h := range []string{"Referer", "Cookie", "Authorization", "Proxy-Authorization"} {
		req.Header.Del(h)
	}
	return nil
}

// Fetch streams the body at rawURL into w and returns how many bytes it wrote. Every refusal
// is an *Error carrying its Reason (scheme, unsafe_host, fetch_failed, timeout, too_large); an
// error from w itself is returned as it is.
func (f *Fetcher) Fetch(ctx context.Context, rawURL string, w io.Writer) (int64, error) {
	n, err := f.fetch(ctx, rawURL, w)
	var e *Error
	if errors.As(err, &e) {
		e.URL = rawURL
	}
	return n, err
}

var errFetchTimeout = errors.New("the fetch deadline passed")

// writeError marks an error of the destination writer so that it is not mistaken for a
// failure of the source.
type writeError struct{ err error }

func (e writeError) Error() string { return e.err.Error() }

type trackingWriter struct{ w io.Writer }

func (t trackingWriter) Write(b []byte) (int, error) {
	n, err := t.w.Write(b)
	if err != nil {
		err = writeError{err}
	}
	return n, err
}

func (f *Fetcher) fetch(ctx context.Context, rawURL string, w io.Writer) (int64, error) {
	u, err := checkScheme(rawURL)
	if err != nil {
		return 0, err
	}
	if _, _, err := f.guard.checkHost(u); err != nil {
		return 0, err
	}
	u.User = nil

	ctx, cancel := context.WithTimeoutCause(ctx, f.opts.Timeout, errFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, &Error{Reason: ReasonScheme, Message: msgScheme, Cause: err}
	}
	req.Header.Set("User-Agent", UserAgent)
	req.Header.Set("Accept", "image/png,image/jpeg,image/webp,image/gif;q=0.9,*/*;q=0.1")

	resp, err := f.client.Do(req)
	if err != nil {
		return 0, f.classify(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return 0, &Error{Reason: ReasonFetchFailed, Message: fmt.Sprintf("the source answered HTTP %d", resp.StatusCode), Cause: fmt.Errorf("status %s", resp.Status)}
	}
	if resp.ContentLength > f.opts.MaxBytes {
		return 0, f.tooLarge(fmt.Errorf("Content-Length %d", resp.ContentLength))
	}

	bp := f.bufs.Get().(*[]byte)
	defer f.bufs.Put(bp)
	n, err := io.CopyBuffer(trackingWriter{w}, io.LimitReader(resp.Body, f.opts.MaxBytes+1), *bp)
	if n > f.opts.MaxBytes {
		return n, f.tooLarge(fmt.Errorf("body passed %d bytes", f.opts.MaxBytes))
	}
	if err != nil {
		var we writeError
		if errors.As(err, &we) {
			return n, we.err
		}
		return n, f.classify(ctx, err)
	}
	return n, nil
}

func (f *Fetcher) tooLarge(cause error) error {
	return &Error{Reason: ReasonTooLarge, Message: fmt.Sprintf("the attachment is larger than %d MiB", f.opts.MaxBytes>>20), Cause: cause}
}

// classify turns a transport error into a refusal: the guard's own refusals keep their
// reason, a passed deadline is a timeout, anything else is the source's failure.
func (f *Fetcher) classify(ctx context.Context, err error) error {
	var e *Error
	if errors.As(err, &e) {
		return &Error{Reason: e.Reason, Message: e.Message, Cause: e.Cause}
	}
	if errors.Is(context.Cause(ctx), errFetchTimeout) || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Reason: ReasonTimeout, Message: fmt.Sprintf("the source did not deliver the attachment within %s", f.opts.Timeout), Cause: err}
	}
	var ue *url.Error
	if errors.As(err, &ue) && ue.Timeout() {
		return &Error{Reason: ReasonTimeout, Message: fmt.Sprintf("the source did not deliver the attachment within %s", f.opts.Timeout), Cause: err}
	}
	return &Error{Reason: ReasonFetchFailed, Message: "the attachment could not be fetched", Cause: err}
}

// Asset is an image stored by FetchImage.
type Asset struct {
	Hash Hash
	Size int64
	ImageInfo
	// Existed is true when the store already held these bytes.
	Existed bool
}

// FetchImage does all of an attachment in one call: fetch rawURL, stream it into the store
// (hashing as it streams), check the bytes are an accepted image, and only then make the blob
// visible. A refusal is an *Error with the contract's Reason and the URL as given, and stores
// nothing; any other error is a local storage failure, not the source's fault. Safe to call
// concurrently; fetching several URLs in parallel is the caller's choice.
func (f *Fetcher) FetchImage(ctx context.Context, s *Store, rawURL string) (Asset, error) {
	p, err := s.Begin()
	if err != nil {
		return Asset{}, err
	}
	defer p.Discard()
	if _, err := f.Fetch(ctx, rawURL, p); err != nil {
		return Asset{}, err
	}
	info, err := CheckImage(p.Reader())
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.URL = rawURL
		}
		return Asset{}, err
	}
	st, err := p.Commit(ctx)
	if err != nil {
		return Asset{}, err
	}
	return Asset{Hash: st.Hash, Size: st.Size, ImageInfo: info, Existed: st.Existed}, nil
}
