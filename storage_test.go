package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	bolt "go.etcd.io/bbolt"
)

// TestLongPostsCostLittleDisk: a 32,000-character post of '<' (the worst case for an encoder that
// escapes HTML) costs at most three times its text on disk, with and without an Idempotency-Key.
// The cost is the growth of the database's used extent (bbolt's high-water page, tx.Size) over
// many posts, measured after a warm-up that takes the file past its first allocations; the
// file's own size, which bbolt grows in big steps, is logged beside it.
func TestLongPostsCostLittleDisk(t *testing.T) {
	const (
		warmup = 20
		posts  = 100
		chars  = engine.MaxTextLength
	)
	body := `{"text":"` + strings.Repeat("<", chars) + `"}`
	for _, keyed := range []bool{false, true} {
		name := map[bool]string{false: "unkeyed", true: "keyed"}[keyed]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := defaultConfig()
			cfg.Data = t.TempDir()
			cfg.ShutdownTimeout = 5 * time.Second
			n := 0
			postAll := func(ts *testServer, apiKey, conv string, count int) {
				for range count {
					n++
					var headers []string
					if keyed {
						headers = []string{"Idempotency-Key", fmt.Sprintf("post-%d", n)}
					}
					mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", apiKey, body, headers...), 201)
				}
			}
			ts := startTestServer(t, cfg)
			org := ts.newOrg(t, 0, 0)
			conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
			postAll(ts, org.APIKey, conv, warmup)
			ts.stop(t)
			usedBefore, fileBefore := databaseSize(t, cfg.Data)

			ts = startTestServer(t, cfg)
			postAll(ts, org.APIKey, conv, posts)
			ts.stop(t)
			usedAfter, fileAfter := databaseSize(t, cfg.Data)

			perPost := float64(usedAfter-usedBefore) / posts
			t.Logf("%s: %d bytes of body, %d of text: %.0f bytes on disk per post (used extent %d → %d), file %d → %d (%.0f per post)",
				name, len(body), chars, perPost, usedBefore, usedAfter, fileBefore, fileAfter, float64(fileAfter-fileBefore)/posts)
			if perPost > 3*chars {
				t.Fatalf("each %d-character post costs %.0f bytes on disk, over three times its text", chars, perPost)
			}
		})
	}
}

// databaseSize opens a stopped server's database read-only and returns its used extent (the
// pages up to bbolt's high-water mark) and the file's size.
func databaseSize(t *testing.T, dir string) (used, file int64) {
	t.Helper()
	path := filepath.Join(dir, engine.DatabaseFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil }); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return used, fi.Size()
}
