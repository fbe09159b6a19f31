package main

import (
	"bytes"
	"sync"
	"time"

	"github.com/awardee/awardee/engine"
	json "github.com/go-json-experiment/json"
	"github.com/valyala/fasthttp"
)

// listsInFlight bounds the list pages being built and sent at once. A page holds at most
// engine.MaxPageBytes of JSON, and while it is answered the server holds it about twice (the
// decoded items, then their encoding), so 4 pages bound list traffic to a few tens of MiB
// however many readers ask; measured, 64 visitors and 16 event readers of 100 messages of
// 32,000 characters peak at about 130 MiB of RSS, against 300 to 500 MiB with no gate. Two
// cores are kept busy with 4 pages in flight, even with some of them waiting on slow sockets.
const listsInFlight = 4

// visitorListsInFlight is the visitors' own gate: a visitor's thread is one conversation, so
// fewer slots serve them, and the two gates together stay within the memory bound above.
const visitorListsInFlight = 2

// listWait is how long a list request waits for a free slot before it is shed: a few pages'
// time, to ride out a burst, and too short for waiting requests to pile up.
const listWait = 500 * time.Millisecond

// pageGate sheds list requests beyond listsInFlight with 503 unavailable and Retry-After rather
// than queueing them without end, and reuses the buffers pages are encoded into.
type pageGate struct {
	slots   chan struct{}
	wait    time.Duration
	buffers sync.Pool
}

func newPageGate(slots int, wait time.Duration) *pageGate {
	return &pageGate{
		slots:   make(chan struct{}, slots),
		wait:    wait,
		buffers: sync.Pool{New: func() any { return new(bytes.Buffer) }},
	}
}

var errListsBusy = engine.Errorf(engine.CodeUnavailable, "the server is answering too many list requests; retry in a second")

// bound wraps a list handler. The slot it takes is held until fasthttp has written the page to
// the client (a slow reader's page still counts against the bound) and then given back with the
// page's buffer.
func (g *pageGate) bound(h handler) handler {
	return func(c *call) (any, error) {
		if !g.acquire() {
			c.ctx.Response.Header.Set("Retry-After", "1")
			return nil, errListsBusy
		}
		result, err := h(c)
		if err != nil {
			g.release(nil)
			return nil, err
		}
		buf := g.buffers.Get().(*bytes.Buffer)
		buf.Reset()
		if err := json.MarshalWrite(buf, result); err != nil {
			g.release(buf)
			return nil, err
		}
		return &encodedPage{gate: g, buf: buf}, nil
	}
}

func (g *pageGate) acquire() bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

func (g *pageGate) release(buf *bytes.Buffer) {
	if buf != nil {
		g.buffers.Put(buf)
	}
	<-g.slots
}

// selfWriting is a handler result that writes its own response body.
type selfWriting interface {
	writeResponse(ctx *fasthttp.RequestCtx, status int)
}

// encodedPage is a list page already encoded; it is the response's body stream, which fasthttp
// closes once written or discarded, and closing it gives its slot and buffer back.
type encodedPage struct {
	gate   *pageGate
	buf    *bytes.Buffer
	reader bytes.Reader
	once   sync.Once
}

func (p *encodedPage) writeResponse(ctx *fasthttp.RequestCtx, status int) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	p.reader.Reset(p.buf.Bytes())
	ctx.SetBodyStream(p, p.buf.Len())
}

func (p *encodedPage) Read(b []byte) (int, error) { return p.reader.Read(b) }

func (p *encodedPage) Close() error {
	p.once.Do(func() { p.gate.release(p.buf) })
	return nil
}
