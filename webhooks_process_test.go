package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/awardee/awardee/internal/testkit"
)

var apiKeyLine = regexp.MustCompile(`API key:\s+(ak_\S+)`)

// TestKillNineLosesNoWebhookDelivery kills the built binary while deliveries are owed, both
// parked for a retry and not yet sent, and checks that after a restart every event of the log
// reaches the receiver with a 2xx.
func TestKillNineLosesNoWebhookDelivery(t *testing.T) {
	t.Setenv("AWARDEE_WEBHOOK_RETRY_SCHEDULE", "100ms,100ms,100ms,100ms")
	t.Setenv("AWARDEE_ALLOW_PRIVATE_NETWORKS", "true") // the receiver is on 127.0.0.1
	dir := t.TempDir()
	p := startProcess(t, dir)
	m := apiKeyLine.FindStringSubmatch(p.stdout.String())
	if m == nil {
		t.Fatalf("no API key in the first start's output:\n%s", p.stdout.String())
	}
	key := m[1]

	// The receiver refuses the first three requests, then hangs until the process dies, so the
	// kill finds deliveries pending a retry and events after a stuck cursor.
	var mu sync.Mutex
	requests := 0
	ok := map[string]int{}
	hang := make(chan struct{})
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		requests++
		n := requests
		mu.Unlock()
		if n <= 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		select {
		case <-hang:
		case <-r.Context().Done():
			return
		}
		mu.Lock()
		ok[r.Header.Get("webhook-id")]++
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	defer rcv.Close()
	var hangOnce sync.Once
	release := func() { hangOnce.Do(func() { close(hang) }) }
	defer release()

	client := &http.Client{Timeout: 10 * time.Second}
	call := func(base, method, path string, body any) map[string]any {
		t.Helper()
		raw, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, base+path, bytes.NewReader(raw))
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		var out map[string]any
		json.NewDecoder(res.Body).Decode(&out)
		if res.StatusCode >= 300 {
			t.Fatalf("%s %s: %d %v", method, path, res.StatusCode, out)
		}
		return out
	}
	call(p.URL, "POST", "/webhooks", map[string]any{"url": rcv.URL})
	conv := call(p.URL, "POST", "/conversations", map[string]any{"status": "open"})["conversation"].(map[string]any)["id"].(string)
	const posts = 20
	for i := range posts {
		call(p.URL, "POST", "/conversations/"+conv+"/messages", map[string]any{"text": fmt.Sprintf("m%d", i)})
	}
	testkit.WaitFor(t, "three refusals and one hanging request", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return requests >= 4
	})
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	mu.Lock()
	delivered := len(ok)
	mu.Unlock()
	if delivered != 0 {
		t.Fatalf("%d deliveries succeeded before the kill; the test needs them all owed", delivered)
	}
	release()

	p2 := startProcess(t, dir)
	events := call(p2.URL, "GET", "/events?limit=100", nil)["data"].([]any)
	if len(events) != posts {
		t.Fatalf("%d events in the log, want %d", len(events), posts)
	}
	testkit.WaitFor(t, "every event delivered after the restart", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range events {
			if ok[ev.(map[string]any)["id"].(string)] == 0 {
				return false
			}
		}
		return true
	})
}
