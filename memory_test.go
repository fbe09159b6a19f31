package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
)

// listMemoryCeiling is the peak resident set the built server may reach while 64 visitors and 16
// API clients read 100-item pages of 32,000-character messages and their events: the pages in
// flight are bounded (shed.go) and so is each page (engine.MaxPageBytes), so memory is too,
// however many readers come.
const listMemoryCeiling = 192 << 20

// TestListPagesKeepMemoryBounded runs the built binary, fills four threads with 100 messages of
// 32,000 '<' each (the longest text, and the worst case for an encoder that escapes HTML), then
// lets 64 visitor readers and 16 event readers at them, a bounded number of requests each
// within a deadline, and reads the server's peak RSS (VmHWM) from /proc.
func TestListPagesKeepMemoryBounded(t *testing.T) {
	dir := t.TempDir()
	apiKey := createOrgCLI(t, dir).APIKey
	p := startProcess(t, dir)

	const threads, perThread = 4, 100
	type thread struct{ id, token string }
	var convs []thread
	for range threads {
		id, token := p.newConversation(t, apiKey, engine.StatusOpen)
		convs = append(convs, thread{id, token})
	}
	body := `{"text":"` + strings.Repeat("<", engine.MaxTextLength) + `"}`
	var posting sync.WaitGroup
	var postFailures atomic.Int64
	for w := range 8 {
		posting.Go(func() {
			for i := w; i < threads*perThread; i += 8 {
				r, err := p.try("POST", "/conversations/"+convs[i%threads].id+"/messages", apiKey, body)
				if err != nil || r.Status != 201 {
					postFailures.Add(1)
				}
			}
		})
	}
	testkit.WaitAll(t, "the posts", &posting)
	if n := postFailures.Load(); n > 0 {
		t.Fatalf("%d of %d posts failed", n, threads*perThread)
	}
	before := peakRSS(t, p.cmd.Process.Pid)

	var statuses sync.Map // status → *atomic.Int64
	count := func(status int) {
		n, _ := statuses.LoadOrStore(status, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	// Readers stop starting requests well before testkit.Timeout, so that the pages still in
	// flight on a loaded machine have time to finish before WaitAll gives up on them.
	deadline := time.Now().Add(testkit.Timeout / 2)
	read := func(path, key string) {
		for range 4 {
			if time.Now().After(deadline) {
				return
			}
			r, err := p.try("GET", path, key, nil)
			if err != nil {
				count(0)
				continue
			}
			if r.Status == 503 && r.Header.Get("Retry-After") == "" {
				t.Errorf("a shed list request has no Retry-After")
			}
			count(r.Status)
		}
	}
	start := time.Now()
	var readers sync.WaitGroup
	for i := range 64 {
		c := convs[i%threads]
		readers.Go(func() { read("/widget/conversations/"+c.id+"/messages?limit=100", c.token) })
	}
	for range 16 {
		readers.Go(func() { read("/events?limit=100", apiKey) })
	}
	testkit.WaitAll(t, "the readers", &readers)
	peak := peakRSS(t, p.cmd.Process.Pid)

	var summary []string
	statuses.Range(func(k, v any) bool {
		summary = append(summary, fmt.Sprintf("%d×%d", v.(*atomic.Int64).Load(), k))
		return true
	})
	t.Logf("peak RSS %d MiB after the posts, %d MiB after the readers (%s in %s)",
		before>>20, peak>>20, strings.Join(summary, " "), time.Since(start).Round(time.Millisecond))
	if v, ok := statuses.Load(200); !ok || v.(*atomic.Int64).Load() < 64 {
		t.Fatalf("fewer than 64 pages were served (%s): the scenario did not load the server", strings.Join(summary, " "))
	}
	if v, ok := statuses.Load(0); ok {
		t.Fatalf("%d requests failed in transport", v.(*atomic.Int64).Load())
	}
	if peak > listMemoryCeiling {
		t.Fatalf("the server's peak RSS reached %d MiB, over the %d MiB ceiling", peak>>20, listMemoryCeiling>>20)
	}
}

// peakRSS reads a process's peak resident set size (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}
