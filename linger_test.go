package main

import (
	"bytes"
	"net/http"
	"testing"
)

// TestOversizedBodyGets413NotReset sends bodies over the limit the way ordinary clients do, all
// at once, and needs every one of them to read the 413: closing with the body unread would reset
// the connection and lose the answer.
func TestOversizedBodyGets413NotReset(t *testing.T) {
	ts := newTestServer(t)
	body := bytes.Repeat([]byte("a"), 2<<20)
	for i := range 20 {
		r, err := ts.try("POST", "/conversations", "", body)
		if err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		if r.Status != http.StatusRequestEntityTooLarge {
			t.Fatalf("attempt %d: status %d", i, r.Status)
		}
	}
}
