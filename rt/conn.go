package rt

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/fasthttp/websocket"
	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Limits of one connection.
const (
	maxClientFrame = 4096            // the auth frame with the longest token fits many times
	replayPage     = 256             // events read from the log per read transaction
	closeGrace     = 2 * time.Second // how long the peer has to answer our close frame
)

// conn is one WebSocket. Its handler goroutine reads (the auth frame, then pongs and the peer's
// close); a writer goroutine runs only while there is something to send, so an idle connection
// costs one parked goroutine, a small read buffer and a timer.
type conn struct {
	hub *Hub
	ws  *websocket.Conn
	raw net.Conn // the socket itself, to cut a peer that stopped reading
	who engine.Principal

	attached bool   // guarded by hub.mu: the connection is in hub.orgs
	authedAt uint64 // guarded by hub.mu: the hub's revocation count when authentication began

	mu        sync.Mutex
	room      *sync.Cond // signalled when the writer takes a frame, or on close
	queue     [][]byte   // frames to write, in order
	pending   []heldEvent
	live      bool   // events go straight to queue; before, to pending
	lastSent  uint64 // the highest event offset queued: anything at or below it is a duplicate
	pingDue   bool
	writing   bool // a writer goroutine runs
	closing   bool // no more frames are accepted; the close frame follows what is queued
	closeCode int
	closeText string
	closeSent bool
	writer    sync.WaitGroup
	workers   sync.WaitGroup // the goroutine that authenticates and replays
	pinger    *time.Timer
}

// heldEvent is a live event that arrived while the connection was replaying the log.
type heldEvent struct {
	offset uint64
	frame  []byte
}

func newConn(h *Hub, ws *websocket.Conn) *conn {
	c := &conn{hub: h, ws: ws, raw: ws.NetConn()}
	if u, ok := c.raw.(interface{ UnsafeConn() net.Conn }); ok {
		// fasthttp's hijacked connection ignores Close until the handler returns.
		c.raw = u.UnsafeConn()
	}
	c.room = sync.NewCond(&c.mu)
	return c
}

// serve takes over an upgraded connection. Its reads run on a goroutine of the hub's, and
// fasthttp's goroutine returns at once: with the server's KeepHijackedConns, that releases the
// request's state (its RequestCtx and buffers), which would otherwise stay pinned for the
// socket's whole life. The hub closes the socket itself.
func (h *Hub) serve(ws *websocket.Conn) {
	c := newConn(h, ws)
	if !h.register(c) {
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "the server is shutting down"), time.Now().Add(time.Second))
		c.cut()
		return
	}
	go c.run()
}

// run is the life of one connection.
func (c *conn) run() {
	h, ws := c.hub, c.ws
	defer h.unregister(c)
	defer c.cut()
	defer c.finish()
	ws.SetReadLimit(maxClientFrame)
	if first, ok := c.readAuthFrame(); ok {
		// The work that needs a deep stack (decoding, the database, the replay) runs on a
		// goroutine that ends when the connection is live; this one stays parked in a shallow
		// read for the connection's life, so its stack stays small.
		c.extendReadDeadline()
		c.workers.Add(1)
		go func() {
			defer c.workers.Done()
			if req, ok := c.authenticate(first); ok {
				c.subscribe(req)
			}
		}()
	}
	c.readUntilClosed()
}

// authFrame is the first frame a client sends, decoded as strictly as every request body
// (json/v2: valid UTF-8, no duplicate names, names matched by case).
type authFrame struct {
	Type        string         `json:"type"`
	Token       string         `json:"token"`
	ResumeAfter jsontext.Value `json:"resume_after"`
}

type authRequest struct {
	resume      bool
	resumeAfter uint64
}

// readAuthFrame waits for the first frame within the auth timeout; without one, the connection
// is closing with the right frame and code.
func (c *conn) readAuthFrame() ([]byte, bool) {
	h := c.hub
	_ = c.ws.SetReadDeadline(time.Now().Add(h.opts.AuthTimeout))
	_, msg, err := c.ws.ReadMessage()
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && !c.isClosing() {
			h.authFailures.Add(1)
			c.refuse(errorFrame(engine.CodeUnauthorized, "no auth frame within the auth timeout"), CloseUnauthorized, "unauthorized")
		}
		return nil, false
	}
	return msg, true
}

// authenticate decodes the auth frame and finds the principal. On any failure the connection is
// already closing with the right frame and code.
func (c *conn) authenticate(msg []byte) (authRequest, bool) {
	h := c.hub
	var f authFrame
	if err := json.Unmarshal(msg, &f); err != nil || f.Type != "auth" || f.Token == "" {
		h.authFailures.Add(1)
		c.refuse(errorFrame(engine.CodeUnauthorized, `the first frame must be {"type":"auth","token":"…"}`), CloseUnauthorized, "unauthorized")
		return authRequest{}, false
	}
	var req authRequest
	if len(f.ResumeAfter) > 0 && string(f.ResumeAfter) != "null" {
		if err := json.Unmarshal(f.ResumeAfter, &req.resumeAfter); err != nil {
			c.refuse(errorFrame(engine.CodeValidation, "resume_after must be an offset: a whole number, 0 or more"), CloseBadRequest, "bad resume_after")
			return authRequest{}, false
		}
		req.resume = true
	}
	h.mu.Lock()
	c.authedAt = h.revocationCount
	h.mu.Unlock()
	who, err := h.opts.Auth.Authenticate(f.Token)
	if err != nil {
		var ee *engine.Error
		if errors.As(err, &ee) && ee.Code == engine.CodeUnauthorized {
			h.authFailures.Add(1)
			c.refuse(errorFrame(engine.CodeUnauthorized, "unknown token"), CloseUnauthorized, "unauthorized")
		} else {
			h.opts.Log.Error("realtime: authentication failed", "err", err)
			c.refuse(errorFrame(engine.CodeInternal, "the server could not check the token; try again"), websocket.CloseInternalServerErr, "internal error")
		}
		return authRequest{}, false
	}
	if who.Kind == engine.KeyWidget || (who.Kind == engine.KeyVisitor && who.ConversationID == "") {
		h.authFailures.Add(1)
		c.refuse(errorFrame(engine.CodeUnauthorized, "this key cannot subscribe: use an API key or a visitor token"), CloseUnauthorized, "unauthorized")
		return authRequest{}, false
	}
	c.who = who
	return req, true
}

// subscribe sends ready, replays the log after the client's offset (or from the latest, without
// one) and switches the connection to live delivery with no gap and no duplicate: the connection
// is attached before the log is read, so an event is either read from the log or held for it by
// live delivery (or both, and lastSent drops the second copy).
func (c *conn) subscribe(req authRequest) {
	h := c.hub
	org := c.who.OrgID
	resync := false
	if req.resume {
		var err error
		if resync, err = h.db.ResumeFrom(org, req.resumeAfter); err != nil {
			var ee *engine.Error
			if errors.As(err, &ee) && ee.Code == engine.CodeValidation {
				c.refuse(errorFrame(engine.CodeValidation, ee.Message), CloseBadRequest, "bad resume_after")
			} else {
				c.internalError(err)
			}
			return
		}
	}
	if h.beforeAttach != nil {
		h.beforeAttach()
	}
	if !h.attach(c) {
		return // the hub is closing, and so is this connection
	}
	_, latest, err := h.db.LogBounds(org)
	if err != nil {
		c.internalError(err)
		return
	}
	after := latest
	if req.resume && !resync {
		after = req.resumeAfter
	}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.lastSent = after
	c.pushLocked(readyFrame(latest))
	if resync {
		c.pushLocked([]byte(`{"type":"resync_required"}`))
	}
	c.pinger = time.AfterFunc(h.opts.PingInterval, c.ping)
	c.mu.Unlock()

	// Events after latest reach the connection live: they commit after it was attached.
	for after < latest {
		events, more, err := h.db.ListEvents(org, after, replayPage)
		if err != nil {
			c.internalError(err)
			return
		}
		for _, ev := range events {
			after = ev.Offset
			if c.who.Kind == engine.KeyVisitor && ev.ConversationID != c.who.ConversationID {
				continue
			}
			f, ok := eventFrame(ev)
			if !ok {
				continue
			}
			if !c.pushReplayed(ev.Offset, f) {
				return
			}
			h.replayed.Add(1)
		}
		if !more {
			break
		}
	}
	if h.beforeLive != nil {
		h.beforeLive()
	}
	h.switchLive(c)
}

// pushReplayed queues a replayed event, waiting while half the queue is taken, so a long replay
// goes at the peer's pace and leaves room for the live events held meanwhile.
func (c *conn) pushReplayed(offset uint64, f []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for !c.closing && len(c.queue) >= max(1, c.hub.opts.SendQueue/2) {
		c.room.Wait()
	}
	if c.closing {
		return false
	}
	if offset > c.lastSent {
		c.pushLocked(f)
		c.lastSent = offset
	}
	return true
}

// offer is live delivery of one event; it runs under hub.mu and never waits.
func (c *conn) offer(offset uint64, f []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	if !c.live {
		if len(c.pending) >= c.hub.opts.SendQueue {
			c.overflowLocked()
			return
		}
		c.pending = append(c.pending, heldEvent{offset, f})
		return
	}
	c.queueEventLocked(offset, f)
}

// goLive runs under hub.mu: it queues the held events the replay did not send, then lets live
// delivery queue directly.
func (c *conn) goLive() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	for _, p := range c.pending {
		if !c.queueEventLocked(p.offset, p.frame) {
			return
		}
	}
	c.pending = nil
	c.live = true
}

func (c *conn) queueEventLocked(offset uint64, f []byte) bool {
	if offset <= c.lastSent {
		return true
	}
	if len(c.queue) >= c.hub.opts.SendQueue {
		c.overflowLocked()
		return false
	}
	c.pushLocked(f)
	c.lastSent = offset
	return true
}

func (c *conn) overflowLocked() {
	c.hub.slowCloses.Add(1)
	c.closeLocked(CloseSlowConsumer, "too slow: the send queue is full; resume from your last offset", nil)
}

// pushLocked queues a frame and makes sure a writer runs.
func (c *conn) pushLocked(f []byte) {
	c.queue = append(c.queue, f)
	c.kickLocked()
}

func (c *conn) kickLocked() {
	if c.writing || c.closeSent {
		return
	}
	c.writing = true
	c.writer.Add(1)
	go c.write()
}

// write sends what is queued, then a due ping, then the close frame once closing; it exits when
// nothing is left, so an idle connection has no writer goroutine and holds no write buffer.
func (c *conn) write() {
	defer c.writer.Done()
	h := c.hub
	for {
		c.mu.Lock()
		var frame []byte
		ping := false
		switch {
		case len(c.queue) > 0:
			frame = c.queue[0]
			c.queue[0] = nil
			c.queue = c.queue[1:]
			if len(c.queue) == 0 {
				c.queue = nil // let the backing array go
			}
			c.room.Broadcast()
		case c.closing && !c.closeSent:
			c.closeSent = true
			code, text := c.closeCode, c.closeText
			c.mu.Unlock()
			_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(h.opts.WriteTimeout))
			c.mu.Lock()
			// The handler reads until the peer answers our close, or gives up after the grace.
			_ = c.ws.SetReadDeadline(time.Now().Add(closeGrace))
			c.writing = false
			c.mu.Unlock()
			return
		case c.pingDue && !c.closing:
			c.pingDue = false
			ping = true
		default:
			c.writing = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()

		var err error
		if ping {
			err = c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(h.opts.WriteTimeout))
		} else {
			_ = c.ws.SetWriteDeadline(time.Now().Add(h.opts.WriteTimeout))
			if err = c.ws.WriteMessage(websocket.TextMessage, frame); err == nil {
				h.framesSent.Add(1)
			}
		}
		if err != nil {
			// The peer is gone or stuck past the write timeout: nothing more can reach it.
			c.mu.Lock()
			c.closing, c.closeSent, c.writing = true, true, false
			c.queue, c.pending = nil, nil
			c.room.Broadcast()
			c.mu.Unlock()
			c.cut()
			return
		}
	}
}

// ping is the connection's timer: it queues a ping and sets itself again.
func (c *conn) ping() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	c.pingDue = true
	c.kickLocked()
	c.pinger.Reset(c.hub.opts.PingInterval)
}

// extendReadDeadline gives the peer until the next ping plus the pong wait to show it is alive.
func (c *conn) extendReadDeadline() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closing {
		_ = c.ws.SetReadDeadline(time.Now().Add(c.hub.opts.PingInterval + c.hub.opts.PongWait))
	}
}

// readUntilClosed reads (and ignores) what the peer sends after its auth frame, keeping the
// connection alive while it answers pings, until the peer goes, dies or answers our close.
func (c *conn) readUntilClosed() {
	c.ws.SetPongHandler(func(string) error {
		c.extendReadDeadline()
		return nil
	})
	for {
		if _, _, err := c.ws.NextReader(); err != nil {
			return
		}
		c.extendReadDeadline()
	}
}

// closeWith starts closing the connection with code: queued frames are dropped, the close frame
// is the next frame written.
func (c *conn) closeWith(code int, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked(code, text, nil)
}

// refuse sends one error frame, then closes with code.
func (c *conn) refuse(frame []byte, code int, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked(code, text, frame)
}

func (c *conn) internalError(err error) {
	c.hub.opts.Log.Error("realtime: reading the event log failed", "org", c.who.OrgID, "err", err)
	c.refuse(errorFrame(engine.CodeInternal, "the server could not read the event log; resume later"), websocket.CloseInternalServerErr, "internal error")
}

func (c *conn) closeLocked(code int, text string, last []byte) {
	if c.closing {
		return
	}
	c.closing = true
	c.closeCode, c.closeText = code, text
	c.queue, c.pending = nil, nil
	if last != nil {
		c.queue = [][]byte{last}
	}
	c.room.Broadcast()
	c.kickLocked()
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// cut closes the socket under the WebSocket, ending any blocked read or write at once; it is
// also the socket's final close.
func (c *conn) cut() { _ = c.raw.Close() }

// finish runs when the handler's reads end. A close we started is let finish (its frames have
// their own write deadlines); otherwise the peer is gone and the socket is cut, so a writer
// blocked on it returns. Either way no goroutine of this connection outlives the handler.
func (c *conn) finish() {
	c.mu.Lock()
	initiated := c.closing
	c.closing = true
	if !initiated {
		c.queue, c.pending = nil, nil
		c.closeSent = true // the peer is gone: no close frame to send
	}
	c.room.Broadcast()
	if c.pinger != nil {
		c.pinger.Stop()
	}
	c.mu.Unlock()
	if !initiated {
		c.cut()
	}
	c.workers.Wait()
	c.writer.Wait()
}
