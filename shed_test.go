package main

import (
	"errors"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
	"github.com/valyala/fasthttp"
)

// TestPageGateShedsBeyondItsSlots: with every slot taken, a list request waits its short while
// and is answered 503 unavailable with Retry-After; a slot stays taken until the page's body has
// been written out, and is free again after.
func TestPageGateShedsBeyondItsSlots(t *testing.T) {
	t.Parallel()
	gate := newPageGate(1, 20*time.Millisecond)
	entered, release := make(chan struct{}), make(chan struct{})
	slow := gate.bound(func(*call) (any, error) {
		close(entered)
		<-release
		return list[int]{Data: []int{1, 2}}, nil
	})
	quick := gate.bound(func(*call) (any, error) { return list[int]{Data: []int{3}}, nil })
	newCall := func() *call { return &call{ctx: &fasthttp.RequestCtx{}} }

	first := make(chan any, 1)
	go func() {
		page, err := slow(newCall())
		if err != nil {
			t.Error(err)
		}
		first <- page
	}()
	testkit.Recv(t, "the first request to take the slot", entered)

	mustBeShed := func(what string) {
		t.Helper()
		c := newCall()
		started := time.Now()
		_, err := quick(c)
		var e *engine.Error
		if !errors.As(err, &e) || e.Code != engine.CodeUnavailable {
			t.Fatalf("%s: %v, want unavailable", what, err)
		}
		if got := string(c.ctx.Response.Header.Peek("Retry-After")); got != "1" {
			t.Fatalf("%s: Retry-After %q, want 1", what, got)
		}
		if waited := time.Since(started); waited < gate.wait {
			t.Fatalf("%s: shed after %s, before its %s wait", what, waited, gate.wait)
		}
	}
	mustBeShed("while the first page is being built")
	close(release)
	page, ok := testkit.Recv(t, "the first page", first).(selfWriting)
	if !ok {
		t.Fatal("the gate's result does not write its own response")
	}
	ctx := &fasthttp.RequestCtx{}
	page.writeResponse(ctx, 200)
	mustBeShed("while the first page waits to be written")

	if body := string(ctx.Response.Body()); body != `{"data":[1,2],"next_cursor":null}` {
		t.Fatalf("page body %s", body)
	}
	if _, err := quick(newCall()); err != nil {
		t.Fatalf("after the page was written the slot is still taken: %v", err)
	}
}

// Visitors' list requests have a gate of their own: with every visitor slot held, the team's
// lists are still answered while another visitor's is shed.
func TestVisitorsCannotHoldTheTeamsListSlots(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id, token := ts.newConversation(t, org.APIKey, engine.StatusOpen)
	for range visitorListsInFlight {
		if !ts.visitorPages.acquire() {
			t.Fatal("could not take a visitor slot")
		}
	}
	defer func() {
		for range visitorListsInFlight {
			ts.visitorPages.release(nil)
		}
	}()
	mustStatus(t, ts.do(t, "GET", "/conversations/"+id+"/messages", org.APIKey, nil), 200)
	mustStatus(t, ts.do(t, "GET", "/widget/conversations/"+id+"/messages", token, nil), 503)
}
