package main

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/awardee/awardee/blobs"
	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
	"github.com/zeebo/blake3"
)

// imageServer is a local source of attachments on 127.0.0.1: every response is labelled
// application/octet-stream or a lie, so only the bytes can tell what is an image.
type imageServer struct {
	*httptest.Server
	requests      atomic.Int64
	png, jpg, gif []byte
	slowStarted   chan struct{} // gets a value when /slow.png is requested
	slowRelease   chan struct{} // /slow.png answers once this is closed
}

func newImageServer(t *testing.T) *imageServer {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, 7, 5))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 7)
	}
	encode := func(f func(*bytes.Buffer) error) []byte {
		var b bytes.Buffer
		if err := f(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	is := &imageServer{
		slowStarted: make(chan struct{}, 1), slowRelease: make(chan struct{}),
		png: encode(func(b *bytes.Buffer) error { return png.Encode(b, img) }),
		jpg: encode(func(b *bytes.Buffer) error { return jpeg.Encode(b, img, nil) }),
		gif: encode(func(b *bytes.Buffer) error {
			return gif.Encode(b, image.NewPaletted(image.Rect(0, 0, 6, 3), color.Palette{color.Black, color.White}), nil)
		}),
	}
	is.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		is.requests.Add(1)
		switch r.URL.Path {
		case "/a.png", "/copy-of-a.png":
			w.Write(is.png)
		case "/b.jpg":
			w.Write(is.jpg)
		case "/c.gif":
			w.Write(is.gif)
		case "/slow.png":
			is.slowStarted <- struct{}{}
			<-is.slowRelease
			w.Write(is.png)
		case "/page.png":
			w.Header().Set("Content-Type", "image/png")
			w.Write([]byte("<!doctype html><title>not an image</title>"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(is.Close)
	return is
}

// Attachments end to end: fetched, stored once per org, served from our own URL with the right
// headers, verified on read, and counted once in usage however often they are posted.
func TestAttachmentsAreFetchedStoredAndServed(t *testing.T) {
	src := newImageServer(t)
	ts := newTestServer(t, func(c *Config) { c.AllowPrivateNetworks = true })
	org, other := ts.newOrg(t, 0, 0), ts.newOrg(t, 0, 0)
	first := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	second, visitorToken := ts.newConversation(t, org.APIKey, engine.StatusBotActive)

	body := fmt.Sprintf(`{"text":"two images","attachments":[{"url":%q},{"url":%q}]}`, src.URL+"/a.png", src.URL+"/c.gif")
	msg := decodeMessage(t, mustStatus(t, ts.do(t, "POST", "/conversations/"+first+"/messages", org.APIKey, body), 201))
	if len(msg.Attachments) != 2 {
		t.Fatalf("the reply has %d attachments, want 2", len(msg.Attachments))
	}
	pngAtt, gifAtt := msg.Attachments[0], msg.Attachments[1]
	if pngAtt.MimeType != "image/png" || pngAtt.Width != 7 || pngAtt.Height != 5 || pngAtt.Size != int64(len(src.png)) ||
		pngAtt.Hash != blobs.Hash(blake3.Sum256(src.png)).String() || !strings.HasPrefix(pngAtt.FileURL, ts.URL+"/files/"+org.OrgID+"/") {
		t.Fatalf("png attachment = %+v", pngAtt)
	}
	if gifAtt.MimeType != "image/gif" || gifAtt.Width != 6 || gifAtt.Height != 3 || !strings.HasSuffix(gifAtt.FileURL, ".gif") {
		t.Fatalf("gif attachment = %+v", gifAtt)
	}

	// The same bytes from another URL, by the bot and by the visitor, in another conversation:
	// one asset, one file_url, billed once.
	bot := decodeMessage(t, mustStatus(t, ts.do(t, "POST", "/conversations/"+second+"/bot-messages", org.APIKey,
		fmt.Sprintf(`{"attachments":[{"url":%q}]}`, src.URL+"/copy-of-a.png")), 201))
	visitor := decodeMessage(t, mustStatus(t, ts.do(t, "POST", "/widget/conversations/"+second+"/messages", visitorToken,
		fmt.Sprintf(`{"text":"mine","attachments":[{"url":%q},{"url":%q}]}`, src.URL+"/a.png", src.URL+"/b.jpg")), 201))
	if bot.Attachments[0].FileURL != pngAtt.FileURL || visitor.Attachments[0].FileURL != pngAtt.FileURL {
		t.Fatalf("the same image got different file URLs: %s, %s, %s", pngAtt.FileURL, bot.Attachments[0].FileURL, visitor.Attachments[0].FileURL)
	}
	if visitor.Attachments[1].MimeType != "image/jpeg" || visitor.Attachments[1].Width != 7 {
		t.Fatalf("jpeg attachment = %+v", visitor.Attachments[1])
	}
	var usage engine.Usage
	mustStatus(t, ts.do(t, "GET", "/usage", org.APIKey, nil), 200).Decode(t, &usage)
	if want := (engine.Usage{AssetCount: 3, AssetBytes: int64(len(src.png) + len(src.gif) + len(src.jpg))}); usage != want {
		t.Fatalf("usage = %+v, want %+v", usage, want)
	}
	assets := pages[engine.Asset](t, ts.apiClient, org.APIKey, "/assets?limit=1")
	if len(assets) != 3 {
		t.Fatalf("/assets lists %d assets over its pages, want 3", len(assets))
	}
	mustStatus(t, ts.do(t, "GET", "/usage", other.APIKey, nil), 200).Decode(t, &usage)
	if usage != (engine.Usage{}) {
		t.Fatalf("another org is billed %+v", usage)
	}

	// Served from our URL: the bytes, the type, a strong ETag, immutable caching, nosniff, ranges.
	path := strings.TrimPrefix(pngAtt.FileURL, ts.URL)
	got := mustStatus(t, ts.do(t, "GET", path, "", nil), 200)
	if !bytes.Equal(got.Body, src.png) || got.Header.Get("Content-Type") != "image/png" ||
		got.Header.Get("ETag") != `"`+pngAtt.Hash+`"` || got.Header.Get("Cache-Control") != "public, max-age=31536000, immutable" ||
		got.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("GET %s: %d bytes, headers %v", path, len(got.Body), got.Header)
	}
	mustStatus(t, ts.do(t, "GET", path, "", nil, "If-None-Match", `"`+pngAtt.Hash+`"`), 304)
	part := mustStatus(t, ts.do(t, "GET", path, "", nil, "Range", "bytes=1-4"), 206)
	if !bytes.Equal(part.Body, src.png[1:5]) || part.Header.Get("Content-Range") != fmt.Sprintf("bytes 1-4/%d", len(src.png)) {
		t.Fatalf("range: %q %v", part.Body, part.Header.Get("Content-Range"))
	}
	if r := mustStatus(t, ts.do(t, "GET", path, "", nil, "Range", "bytes=9999-"), 416); r.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("a 416 is cacheable: %q", r.Header.Get("Cache-Control"))
	}
	if r := mustStatus(t, ts.do(t, "GET", path, "", nil, "Range", "bytes=0-1,3-4"), 200); !bytes.Equal(r.Body, src.png) {
		t.Fatal("several ranges were not answered with the whole file")
	}
	mustStatus(t, ts.do(t, "GET", strings.Replace(path, org.OrgID, other.OrgID, 1), "", nil), 404)
	mustStatus(t, ts.do(t, "GET", strings.TrimSuffix(path, ".png")+".gif", "", nil), 404)
	mustStatus(t, ts.do(t, "GET", "/files/"+org.OrgID+"/"+strings.Repeat("0", 64)+".png", "", nil), 404)

	// A stored blob that no longer matches its hash is never served.
	flipStoredByte(t, ts.dir, pngAtt.Hash)
	if r := ts.do(t, "GET", path, "", nil); r.Status != 503 || bytes.Equal(r.Body, src.png) {
		t.Fatalf("a corrupt blob was answered %d", r.Status)
	}
}

// flipStoredByte corrupts the blob of hash in a data directory, changing its identity (size and
// mtime kept) only as decay on the disk would.
func flipStoredByte(t *testing.T, dataDir, hash string) {
	t.Helper()
	var found string
	filepath.WalkDir(filepath.Join(dataDir, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && filepath.Base(p) == hash {
			found = p
		}
		return nil
	})
	if found == "" {
		t.Fatalf("blob %s not found on disk", hash)
	}
	raw, err := os.ReadFile(found)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0xff
	if err := os.WriteFile(found, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A bad attachment refuses the whole post before anything happens: no takeover, no marker, no
// message, no event, no asset, no usage; the status check comes before any download.
func TestBadAttachmentChangesNothing(t *testing.T) {
	src := newImageServer(t)
	ts := newTestServer(t, func(c *Config) { c.AllowPrivateNetworks = true })
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusAgentRequested)
	before := ts.events(t, org.APIKey)
	for _, c := range []struct{ path, reason string }{
		{"/page.png", "not_image"},
		{"/missing.png", "fetch_failed"},
	} {
		u := src.URL + c.path
		body := fmt.Sprintf(`{"text":"look","attachments":[{"url":%q},{"url":%q}]}`, src.URL+"/a.png", u)
		r := mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, body), 422)
		details := mustAPIError(t, r, 422, engine.CodeInvalidPayload).Details
		if details["url"] != u || details["reason"] != c.reason {
			t.Fatalf("%s: details %v, want url %s and reason %s", c.path, details, u, c.reason)
		}
	}
	if conv := fetchConversation(t, ts, org.APIKey, id); conv.Status != engine.StatusAgentRequested {
		t.Fatalf("a refused takeover left the conversation %s", conv.Status)
	}
	if n := len(ts.messages(t, org.APIKey, id)); n != 0 {
		t.Fatalf("%d messages after refused posts", n)
	}
	if after := ts.events(t, org.APIKey); len(after) != len(before) {
		t.Fatalf("the log grew from %d to %d events", len(before), len(after))
	}
	var usage engine.Usage
	mustStatus(t, ts.do(t, "GET", "/usage", org.APIKey, nil), 200).Decode(t, &usage)
	if usage != (engine.Usage{}) {
		t.Fatalf("refused posts billed %+v", usage)
	}

	resolved := ts.conversationIn(t, org.APIKey, engine.StatusResolved)
	seen := src.requests.Load()
	mustStatus(t, ts.do(t, "POST", "/conversations/"+resolved+"/messages", org.APIKey,
		fmt.Sprintf(`{"attachments":[{"url":%q}]}`, src.URL+"/a.png")), 400)
	if src.requests.Load() != seen {
		t.Fatal("a post refused for its status still downloaded its attachment")
	}
}

// Without --allow-private-networks every loopback or private form is refused as unsafe_host and
// the source sees no request at all.
func TestAttachmentsRefuseUnsafeHosts(t *testing.T) {
	src := newImageServer(t)
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	port := src.URL[strings.LastIndex(src.URL, ":")+1:]
	for _, host := range []string{"127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "2130706433", "0x7f000001",
		"169.254.169.254", "10.0.0.1", "192.168.1.1", "172.16.0.1", "100.64.0.1", "[fd00::1]"} {
		u := "http://" + host + ":" + port + "/a.png"
		r := ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, fmt.Sprintf(`{"attachments":[{"url":%q}]}`, u))
		details := mustAPIError(t, r, 422, engine.CodeInvalidPayload).Details
		if details["reason"] != "unsafe_host" || details["url"] != u {
			t.Errorf("%s: details %v, want unsafe_host", host, details)
		}
	}
	if n := src.requests.Load(); n != 0 {
		t.Fatalf("the image server saw %d requests from a server that must refuse it", n)
	}
}

// The orphan sweeper removes a blob no org references once its grace period is over, and keeps
// every blob a message uses.
func TestOrphanBlobsAreSwept(t *testing.T) {
	src := newImageServer(t)
	ts := newTestServer(t, func(c *Config) { c.AllowPrivateNetworks = true })
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	used := decodeMessage(t, mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey,
		fmt.Sprintf(`{"attachments":[{"url":%q}]}`, src.URL+"/a.png")), 201)).Attachments[0].Hash

	// An orphan, as a crash between storing a blob and committing its message leaves one: put
	// by another handle on the directory, so this server's store holds no memory of it.
	other, err := blobs.Open(filepath.Join(ts.dir, "blobs"), blobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := other.Put(t.Context(), bytes.NewReader(src.jpg))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ts.sweepOrphanBlobs(t.Context()); err != nil || n != 0 {
		t.Fatalf("a sweep within the grace period deleted %d (%v)", n, err)
	}
	old := time.Now().Add(-2 * time.Hour)
	for _, h := range []string{orphan.Hash.String(), used} {
		ageBlob(t, ts.dir, h, old)
	}
	if n, err := ts.sweepOrphanBlobs(t.Context()); err != nil || n != 1 {
		t.Fatalf("the sweep deleted %d blobs (%v), want the one orphan", n, err)
	}
	if _, err := other.Open(t.Context(), orphan.Hash); err == nil {
		t.Fatal("the orphan is still stored")
	}
	path := "/files/" + org.OrgID + "/" + used + ".png"
	if r := mustStatus(t, ts.do(t, "GET", path, "", nil), 200); !bytes.Equal(r.Body, src.png) {
		t.Fatal("the referenced blob changed")
	}
}

func ageBlob(t *testing.T, dataDir, hash string, at time.Time) {
	t.Helper()
	err := filepath.WalkDir(filepath.Join(dataDir, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && filepath.Base(p) == hash {
			return os.Chtimes(p, at, at)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A keyed request stays in flight while its attachments download: the same key meanwhile is 409,
// and the first request's answer is what a retry then replays.
func TestKeyedPostHoldsItsKeyWhileFetching(t *testing.T) {
	src := newImageServer(t)
	ts := newTestServer(t, func(c *Config) { c.AllowPrivateNetworks = true })
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	path := "/conversations/" + id + "/messages"
	body := fmt.Sprintf(`{"attachments":[{"url":%q}]}`, src.URL+"/slow.png")
	var release sync.Once
	unblock := func() { release.Do(func() { close(src.slowRelease) }) }
	t.Cleanup(unblock) // before the image server's own cleanup, which waits for its handlers
	first := ts.goDo("POST", path, org.APIKey, body, "Idempotency-Key", "slow")
	testkit.Recv(t, "the fetch to reach the source", src.slowStarted)
	mustAPIError(t, ts.do(t, "POST", path, org.APIKey, body, "Idempotency-Key", "slow"), 409, engine.CodeIdempotencyInUse)
	unblock()
	done := mustStatus(t, receive(t, "the slow post", first), 201)
	replay := mustStatus(t, ts.do(t, "POST", path, org.APIKey, body, "Idempotency-Key", "slow"), 201)
	if !bytes.Equal(done.Body, replay.Body) || replay.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("the retry after the fetch was not a replay: %s", replay.Body)
	}
}
