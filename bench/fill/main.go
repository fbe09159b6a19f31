// Command fill writes a data directory holding N messages, fast, for measuring what a big
// database costs (start-up time, memory):
//
//	go run ./bench/fill --data /tmp/awardee-1m --messages 1000000
//
// It writes through the engine's own commit path (engine.Open, CreateConversation, PostMessage),
// so every row a server writes is there: conversation records, the activity index, messages,
// events, per-status counts, and the plug-in buckets a server declares. `awardee check` passes on
// the result. It makes one org, prints its API key, and leaves the directory ready to serve.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/hooks"
)

// Config is one fill.
type Config struct {
	Data     string
	Messages int
	PerConv  int // messages per conversation; the last one may hold fewer
	Writers  int // concurrent posters: the commit loop batches what they queue, one fsync each
	TextSize int
	Progress io.Writer // a line a second; nil for none
}

// Result is what a fill wrote.
type Result struct {
	OrgID         string  `json:"org_id"`
	APIKey        string  `json:"api_key"`
	Conversations int     `json:"conversations"`
	Messages      int     `json:"messages"`
	FileBytes     int64   `json:"file_bytes"`
	Seconds       float64 `json:"seconds"`
}

func main() {
	cfg := Config{Messages: 100_000, PerConv: 100, Writers: 256, TextSize: 200, Progress: os.Stderr}
	fs := flag.NewFlagSet("fill", flag.ContinueOnError)
	fs.StringVar(&cfg.Data, "data", "", "data directory to create (must not hold a database yet)")
	fs.IntVar(&cfg.Messages, "messages", cfg.Messages, "messages to write")
	fs.IntVar(&cfg.PerConv, "per-conversation", cfg.PerConv, "messages per conversation")
	fs.IntVar(&cfg.Writers, "writers", cfg.Writers, "concurrent writers")
	fs.IntVar(&cfg.TextSize, "text-size", cfg.TextSize, "characters per message")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	res, err := Fill(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fill:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.Encode(res)
}

// Fill makes cfg.Data and writes cfg.Messages messages into it. Messages alternate between the
// visitor and the team, so both roles' rows and metadata are there; conversations stay open.
func Fill(ctx context.Context, cfg Config) (Result, error) {
	switch {
	case cfg.Data == "":
		return Result{}, errors.New("--data is required")
	case cfg.Messages < 1 || cfg.PerConv < 1 || cfg.Writers < 1 || cfg.TextSize < 1:
		return Result{}, errors.New("--messages, --per-conversation, --writers and --text-size must be at least 1")
	}
	if _, err := os.Stat(filepath.Join(cfg.Data, engine.DatabaseFile)); err == nil {
		return Result{}, fmt.Errorf("%s already holds a database; fill writes a new one", cfg.Data)
	}
	start := time.Now()
	// No org needs a rate window here: the engine does not meter, the HTTP layer does. The org
	// still gets a wide one, so the filled directory can be loaded through the API afterwards.
	db, err := engine.Open(cfg.Data, engine.Options{Buckets: hooks.Buckets})
	if err != nil {
		return Result{}, err
	}
	closed := false
	defer func() {
		if !closed {
			db.Close()
		}
	}()
	org, err := db.CreateOrg(ctx, engine.NewOrg{Name: "fill", Rate: 100_000, Burst: 100_000})
	if err != nil {
		return Result{}, err
	}
	key, err := db.Authenticate(org.APIKey)
	if err != nil {
		return Result{}, err
	}
	convs := (cfg.Messages + cfg.PerConv - 1) / cfg.PerConv
	text := strings.Repeat("x", cfg.TextSize)
	var nextConv, written atomic.Int64
	var firstErr error
	var errOnce sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fail := func(err error) { errOnce.Do(func() { firstErr = err; cancel() }) }
	done := make(chan struct{})
	go reportProgress(cfg.Progress, &written, cfg.Messages, done)
	var wg sync.WaitGroup
	for range min(cfg.Writers, convs) {
		wg.Go(func() {
			for ctx.Err() == nil {
				c := int(nextConv.Add(1) - 1)
				if c >= convs {
					return
				}
				n := min(cfg.PerConv, cfg.Messages-c*cfg.PerConv)
				created, _, err := db.CreateConversation(ctx, org.OrgID, engine.NewConversation{
					Status:  engine.StatusOpen,
					Visitor: engine.Visitor{Name: ptr(fmt.Sprintf("Visitor %d", c))},
				}, nil)
				if err != nil {
					fail(err)
					return
				}
				for i := range n {
					in := engine.NewMessage{OrgID: org.OrgID, ConversationID: created.Conversation.ID, Author: engine.AuthorVisitor, Text: text}
					if i%2 == 1 {
						in.Author, in.APIKeyID = engine.AuthorAgent, key.KeyID
					}
					if _, _, err := db.PostMessage(ctx, in, nil); err != nil {
						fail(err)
						return
					}
					written.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(done)
	if firstErr != nil {
		return Result{}, firstErr
	}
	closed = true
	if err := db.Close(); err != nil {
		return Result{}, err
	}
	info, err := os.Stat(filepath.Join(cfg.Data, engine.DatabaseFile))
	if err != nil {
		return Result{}, err
	}
	return Result{OrgID: org.OrgID, APIKey: org.APIKey, Conversations: convs, Messages: int(written.Load()),
		FileBytes: info.Size(), Seconds: time.Since(start).Seconds()}, nil
}

func reportProgress(w io.Writer, written *atomic.Int64, total int, done <-chan struct{}) {
	if w == nil {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			fmt.Fprintf(w, "%d/%d messages\n", written.Load(), total)
		}
	}
}

func ptr[T any](v T) *T { return &v }
