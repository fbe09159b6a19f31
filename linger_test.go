package main

import (
	"bytes"
	"net/http"
	"testing"
	"time"
)

// TestOversizedBodyGets413NotReset sends bodies over the limit the way ordinary clients do, all
// at once, and needs every one of them to read the 413: closing with the body unread would reset
// the connection and lose the answer.
func TestOversizedBodyGets413NotReset(t *testing.T) {
	ts := newTestServer(t)
	body := bytes.Repeat([]byte("a"), 2<<20)
	client := &http.Client{Timeout: 30 * time.Second}
	for i := range 20 {
		res, err := client.Post(ts.URL+"/conversations", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("attempt %d: status %d", i, res.StatusCode)
		}
	}
}
