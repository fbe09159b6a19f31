package rt

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
	"github.com/fasthttp/websocket"
)

func TestLiveDeliveryToOrgAndVisitor(t *testing.T) {
	th := newTestHub(t, Options{})
	org := th.newOrg(t)
	conv := th.newConv(t, org.OrgID, engine.StatusOpen)
	before := th.post(t, org.OrgID, conv.Conversation.ID, "before anyone listens")
	_ = before

	team := th.dial(t)
	team.auth(org.APIKey, -1)
	visitor := th.dial(t)
	visitor.auth(conv.VisitorToken, -1)
	latest := th.latest(t, org.OrgID)
	for _, c := range []*client{team, visitor} {
		if r := c.expectType("ready"); r.Offset != latest {
			t.Fatalf("ready offset %d, want the org's latest %d", r.Offset, latest)
		}
	}

	msg := th.post(t, org.OrgID, conv.Conversation.ID, "hello, live")
	for name, c := range map[string]*client{"team": team, "visitor": visitor} {
		f := c.expectType("new_message")
		if f.Offset != latest+1 || f.ConversationID != conv.Conversation.ID || f.Message == nil ||
			f.Message.ID != msg.ID || f.Message.Text != "hello, live" || f.Message.Seq != msg.Seq {
			t.Fatalf("%s got %s, want new_message of %s at offset %d", name, f.raw, msg.ID, latest+1)
		}
	}
	if st := th.hub.Stats(); st.Connections["api"] != 1 || st.Connections["visitor"] != 1 {
		t.Fatalf("stats %+v, want one api and one visitor connection", st)
	}
	testkit.WaitFor(t, "four frames counted", func() bool { return th.hub.Stats().FramesSent == 4 })
}

func TestTakeoverGivesTheVisitorStatusAndBothMessagesInOrder(t *testing.T) {
	th := newTestHub(t, Options{})
	org := th.newOrg(t)
	conv := th.newConv(t, org.OrgID, engine.StatusAgentRequested)
	visitor := th.dial(t)
	visitor.auth(conv.VisitorToken, -1)
	ready := visitor.expectType("ready")

	reply := th.post(t, org.OrgID, conv.Conversation.ID, "Hi, how can I help?")
	upd := visitor.expectType("conversation.updated")
	if upd.Conversation == nil || upd.Conversation.Status != engine.StatusOpen ||
		fmt.Sprintf("%v %v", upd.Changes["status"].From, upd.Changes["status"].To) != "agent_requested open" {
		t.Fatalf("got %s, want the status change agent_requested → open", upd.raw)
	}
	marker := visitor.expectType("new_message")
	answer := visitor.expectType("new_message")
	if marker.Message.Role != engine.RoleSystem || answer.Message.ID != reply.ID {
		t.Fatalf("got %s then %s, want the system marker then the reply", marker.raw, answer.raw)
	}
	if !(ready.Offset < upd.Offset && upd.Offset < marker.Offset && marker.Offset < answer.Offset) {
		t.Fatalf("offsets %d %d %d %d are not increasing", ready.Offset, upd.Offset, marker.Offset, answer.Offset)
	}
}

func TestVisitorSeesOnlyItsConversation(t *testing.T) {
	th := newTestHub(t, Options{})
	orgA, orgB := th.newOrg(t), th.newOrg(t)
	mine := th.newConv(t, orgA.OrgID, engine.StatusOpen)
	sibling := th.newConv(t, orgA.OrgID, engine.StatusOpen)
	foreign := th.newConv(t, orgB.OrgID, engine.StatusOpen)
	th.post(t, orgA.OrgID, sibling.Conversation.ID, "sibling, before")

	visitor := th.dial(t)
	visitor.auth(mine.VisitorToken, 0) // replay too: the log holds the sibling's message
	visitor.expectType("ready")
	teamB := th.dial(t)
	teamB.auth(orgB.APIKey, -1)
	teamB.expectType("ready")
	teamA := th.dial(t) // org A's events then always have a receiver
	teamA.auth(orgA.APIKey, -1)
	teamA.expectType("ready")

	th.post(t, orgA.OrgID, sibling.Conversation.ID, "sibling, live")
	th.post(t, orgB.OrgID, foreign.Conversation.ID, "other org")
	th.post(t, orgA.OrgID, mine.Conversation.ID, "mine")
	// Frames arrive in offset order, so anything the visitor must not see would come first.
	if f := visitor.expectType("new_message"); f.ConversationID != mine.Conversation.ID || f.Message.Text != "mine" {
		t.Fatalf("visitor got %s, want only its own conversation's message", f.raw)
	}
	if f := teamB.expectType("new_message"); f.ConversationID != foreign.Conversation.ID {
		t.Fatalf("org B got %s, want only org B's message", f.raw)
	}
	for _, want := range []string{"sibling, live", "mine"} {
		if f := teamA.expectType("new_message"); f.Message.Text != want {
			t.Fatalf("org A got %s, want %q", f.raw, want)
		}
	}
	th.post(t, orgB.OrgID, foreign.Conversation.ID, "other org again")
	if f := teamB.expectType("new_message"); f.Message.Text != "other org again" {
		t.Fatalf("org B got %s", f.raw)
	}
}

// A client that reconnects over and over while messages are committed, resuming after the last
// offset it saw, gets every offset exactly once and in order.
func TestResumeHasNoGapAndNoDuplicate(t *testing.T) {
	th := newTestHub(t, Options{})
	org := th.newOrg(t)
	conv := th.newConv(t, org.OrgID, engine.StatusOpen)
	const posts = 400
	var count atomic.Int64
	post := func() {
		if n := count.Add(1); n <= posts {
			if _, _, err := th.db.PostMessage(context.Background(), engine.NewMessage{
				OrgID: org.OrgID, ConversationID: conv.Conversation.ID, Author: engine.AuthorAgent, Text: fmt.Sprint("m", n),
			}, nil); err != nil {
				t.Error(err)
			}
		}
	}
	// Half the posts come from a steady writer, half exactly while a connection switches from
	// the log to live delivery.
	th.hub.beforeLive = func() {
		if rand.IntN(2) == 0 {
			post()
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for count.Load() < posts {
			post()
		}
	}()
	t.Cleanup(func() { // before the hub and database close, also when the test fails early
		count.Store(posts)
		wg.Wait()
	})

	var last uint64
	rounds := 0
	deadline := time.Now().Add(waitTimeout)
	for last < posts && time.Now().Before(deadline) {
		rounds++
		c := th.dial(t)
		c.auth(org.APIKey, int64(last))
		r := c.expectType("ready")
		if r.Offset < last {
			t.Fatalf("round %d: ready offset %d is before the resume offset %d", rounds, r.Offset, last)
		}
		for range 1 + rand.IntN(8) {
			if last == posts {
				break
			}
			f := c.expectType("new_message")
			if f.Offset != last+1 {
				t.Fatalf("round %d: got offset %d after %d", rounds, f.Offset, last)
			}
			last = f.Offset
		}
		c.ws.Close()
	}
	wg.Wait()
	if last != posts {
		t.Fatalf("caught up to offset %d of %d in %d rounds", last, posts, rounds)
	}
	if th.hub.Stats().ReplayedEvents == 0 {
		t.Fatal("no event was replayed from the log")
	}
}

func TestResumeAfterPrunedOffsetAsksForResync(t *testing.T) {
	th := newTestHub(t, Options{})
	org := th.newOrg(t)
	conv := th.newConv(t, org.OrgID, engine.StatusOpen)
	for range 3 {
		th.post(t, org.OrgID, conv.Conversation.ID, "old")
	}
	if _, err := th.db.PruneEvents(context.Background(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	c := th.dial(t)
	c.auth(org.APIKey, 1)
	if r := c.expectType("ready"); r.Offset != 3 {
		t.Fatalf("ready offset %d, want 3", r.Offset)
	}
	c.expectType("resync_required")
	th.post(t, org.OrgID, conv.Conversation.ID, "new")
	if f := c.expectType("new_message"); f.Offset != 4 {
		t.Fatalf("after resync got offset %d, want 4", f.Offset)
	}

	// Resuming after the latest offset (nothing missed) needs no resync.
	ok := th.dial(t)
	ok.auth(org.APIKey, 4)
	ok.expectType("ready")
	th.post(t, org.OrgID, conv.Conversation.ID, "newer")
	if f := ok.expectType("new_message"); f.Offset != 5 {
		t.Fatalf("got %s, want offset 5", f.raw)
	}
}

func TestBadResumeOffsetsAreValidationErrors(t *testing.T) {
	th := newTestHub(t, Options{})
	org := th.newOrg(t)
	for name, resume := range map[string]string{
		"beyond the latest": `99`,
		"negative":          `-1`,
		"fraction":          `1.5`,
		"text":              `"0"`,
	} {
		t.Run(name, func(t *testing.T) {
			c := th.dial(t)
			frame := `{"type":"auth","token":"` + org.APIKey + `","resume_after":` + resume + `}`
			if err := c.ws.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
				t.Fatal(err)
			}
			got := c.expectClose(CloseBadRequest)
			if len(got) != 1 || got[0].Type != "error" || got[0].Code != engine.CodeValidation {
				t.Fatalf("got %v, want one validation_error frame and no ready", got)
			}
		})
	}
}

func TestBadTokensAreRefused(t *testing.T) {
	th := newTestHub(t, Options{})
	org := th.newOrg(t)
	for name, first := range map[string]string{
		"unknown token":  `{"type":"auth","token":"ak_nope"}`,
		"widget key":     `{"type":"auth","token":"` + org.WidgetKey + `"}`,
		"no token":       `{"type":"auth"}`,
		"other type":     `{"type":"hello","token":"` + org.APIKey + `"}`,
		"not json":       `auth ` + org.APIKey,
		"empty token":    `{"type":"auth","token":""}`,
		"token not text": `{"type":"auth","token":42}`,
		"duplicate name": `{"type":"auth","token":"ak_nope","token":"` + org.APIKey + `"}`,
		"miscased name":  `{"type":"auth","TOKEN":"` + org.APIKey + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			c := th.dial(t)
			if err := c.ws.WriteMessage(websocket.TextMessage, []byte(first)); err != nil {
				t.Fatal(err)
			}
			got := c.expectClose(CloseUnauthorized)
			if len(got) != 1 || got[0].Type != "error" || got[0].Code != engine.CodeUnauthorized {
				t.Fatalf("got %v, want exactly one unauthorized error frame (never ready)", got)
			}
		})
	}
}

func TestSilentClientIsClosedAfterTheAuthTimeout(t *testing.T) {
	th := newTestHub(t, Options{AuthTimeout: 150 * time.Millisecond})
	c := th.dial(t)
	start := time.Now()
	got := c.expectClose(CloseUnauthorized)
	if len(got) != 1 || got[0].Code != engine.CodeUnauthorized {
		t.Fatalf("got %v, want one unauthorized error frame", got)
	}
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Fatalf("closed after %v, before the auth timeout", waited)
	}
}

func TestShutdownClosesEveryConnectionWithGoingAway(t *testing.T) {
	th := newTestHub(t, Options{})
	org := th.newOrg(t)
	live := th.dial(t)
	live.auth(org.APIKey, -1)
	live.expectType("ready")
	unauthenticated := th.dial(t)
	testkit.WaitFor(t, "both connections", func() bool { return th.hub.Stats().Unauthenticated == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- th.hub.Close(ctx) }()
	live.expectClose(websocket.CloseGoingAway)
	unauthenticated.expectClose(websocket.CloseGoingAway)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if st := th.hub.Stats(); st.Connections["api"]+st.Unauthenticated != 0 {
		t.Fatalf("stats %+v after Close, want no connection", st)
	}
}

// A reader that stops reading is closed with 4008 once its queue overflows, while a fast reader
// on the same org receives every event.
func TestSlowReaderIsClosedWhileFastReadersKeepUp(t *testing.T) {
	th := newTestHub(t, Options{SendQueue: 64})
	org := th.newOrg(t)
	conv := th.newConv(t, org.OrgID, engine.StatusOpen)

	// A small receive window makes the kernel stop taking the slow reader's frames early.
	small := &websocket.Dialer{NetDial: func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) {
				_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
		}}
		return d.Dial(network, addr)
	}}
	slow := dialWith(t, small, th.url)
	slow.auth(org.APIKey, -1)
	slow.expectType("ready")
	fast := th.dial(t)
	fast.auth(org.APIKey, -1)
	fast.expectType("ready")

	offsets := make(chan uint64, 2000)
	go func() {
		defer close(offsets)
		for {
			f, err := fast.read()
			if err != nil {
				return
			}
			if f.Type == "new_message" {
				offsets <- f.Offset
			}
		}
	}()
	big := text(engine.MaxTextLength)
	posted := 0
	for th.hub.Stats().SlowConsumerCloses == 0 {
		if posted == 1000 {
			t.Fatal("the slow reader was never closed")
		}
		th.post(t, org.OrgID, conv.Conversation.ID, big)
		posted++
	}
	th.post(t, org.OrgID, conv.Conversation.ID, "last")
	posted++
	timeout := time.After(waitTimeout)
	for want := uint64(1); want <= uint64(posted); want++ {
		select {
		case off, ok := <-offsets:
			if !ok {
				t.Fatalf("the fast reader's connection ended after %d of %d messages", want-1, posted)
			}
			if off != want {
				t.Fatalf("fast reader got offset %d, want %d", off, want)
			}
		case <-timeout:
			t.Fatalf("fast reader got %d of %d messages", want-1, posted)
		}
	}
	if st := th.hub.Stats(); st.SlowConsumerCloses != 1 {
		t.Fatalf("stats %+v, want exactly the slow reader closed", st)
	}
	slow.expectClose(CloseSlowConsumer)
}

// A peer that stops answering pings is closed; one that answers stays across many pings.
func TestPingsKeepLivePeersAndCloseDeadOnes(t *testing.T) {
	th := newTestHub(t, Options{PingInterval: 50 * time.Millisecond, PongWait: 100 * time.Millisecond})
	org := th.newOrg(t)
	alive := th.dial(t)
	pings := make(chan struct{}, 100)
	alive.ws.SetPingHandler(func(data string) error {
		pings <- struct{}{}
		return alive.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	alive.auth(org.APIKey, -1)
	alive.expectType("ready")
	go func() {
		for {
			if _, _, err := alive.ws.NextReader(); err != nil {
				return
			}
		}
	}()

	dead := th.dial(t)
	dead.ws.SetPingHandler(func(string) error { return nil }) // never answers
	dead.auth(org.APIKey, -1)
	dead.expectType("ready")
	go func() {
		for {
			if _, _, err := dead.ws.NextReader(); err != nil {
				return
			}
		}
	}()

	for range 6 {
		select {
		case <-pings:
		case <-time.After(waitTimeout):
			t.Fatal("no ping")
		}
	}
	testkit.WaitFor(t, "the silent peer to be closed", func() bool { return th.hub.Stats().Connections["api"] == 1 })
	// Six pings took at least 250 ms, longer than a silent peer is allowed: the live one stayed.
}

// Connections that come and go leave no goroutine behind.
func TestGoroutinesReturnToBaselineAfterManyConnections(t *testing.T) {
	th := newTestHub(t, Options{})
	org := th.newOrg(t)
	conv := th.newConv(t, org.OrgID, engine.StatusOpen)
	settle := func() int {
		runtime.GC()
		return runtime.NumGoroutine()
	}
	baseline := settle()

	const total, workers = 1000, 8
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var open []*client
			for i := range total / workers {
				c := th.dial(t)
				token := org.APIKey
				if i%2 == 1 {
					token = conv.VisitorToken
				}
				switch i % 5 {
				case 3: // leaves before authenticating
				case 4: // refused
					c.auth("ak_wrong", -1)
					c.expectClose(CloseUnauthorized)
				default:
					c.auth(token, int64(w%2)-1)
					c.expectType("ready")
				}
				open = append(open, c)
			}
			for _, c := range open {
				c.ws.Close()
			}
		}()
	}
	wg.Wait()
	th.post(t, org.OrgID, conv.Conversation.ID, "after everyone left")
	testkit.WaitFor(t, "every connection to be gone", func() bool {
		st := th.hub.Stats()
		return st.Connections["api"]+st.Connections["visitor"]+st.Unauthenticated == 0
	})
	testkit.WaitFor(t, fmt.Sprintf("the goroutine count to return to %d", baseline), func() bool { return settle() <= baseline+2 })
}
