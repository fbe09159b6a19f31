// Package ceiling holds the reference servers a load run is compared with: what this machine's
// HTTP stack and disk can do for a post, with none of Awardee's rules in the way. They answer the
// same HTTP shape as Awardee's POST /conversations and POST /conversations/{id}/messages, so the
// very same load runs against each of them and against Awardee, on the same disk, in one run.
//
//   - NoWrite answers every post 201 at once: the HTTP ceiling.
//   - OneRow appends each post's body to a bbolt file through a group-commit loop, one row per
//     post, and answers 201 after that batch's fsync: the ceiling of a durable post.
//   - PostRows runs the same loop writing the rows an Awardee post writes (the message under
//     conversation · seq, the event under the org's log offset, the conversation record
//     rewritten, its two activity keys moved): the floor of today's key layout.
//
// They check nothing (no auth, no rate window, no JSON) and must never be taken for a server.
package ceiling

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/valyala/fasthttp"
	bolt "go.etcd.io/bbolt"
)

// A Reference is one reference server.
type Reference struct {
	// Name is how reports name it: no-write, one-row or post-rows.
	Name string
	// Start serves it on 127.0.0.1 with its database (if any) in dir, which must exist; stop
	// shuts it down, commits what is queued and closes the file. The caller removes dir.
	Start func(dir string) (url string, stop func() error, err error)
}

// References are the three reference servers, from the cheapest post to the dearest.
var References = []Reference{
	{Name: "no-write", Start: StartNoWrite},
	{Name: "one-row", Start: StartOneRow},
	{Name: "post-rows", Start: StartPostRows},
}

// Sizes of the rows PostRows writes, as an Awardee post of a 55-character text stores them
// today (the stored message.created event names its message and keeps the conversation
// snapshot). The pages a batch touches matter more than these bytes.
const (
	messageSize      = 314
	eventSize        = 436
	conversationSize = 250
)

// maxBatch matches the engine's default: the most posts one transaction takes.
const maxBatch = 1024

// appendFill is the engine's page fill for buckets that only grow at the end of a key range.
const appendFill = 0.95

// StartNoWrite serves posts without storing anything: 201 as soon as the request is read.
func StartNoWrite(string) (string, func() error, error) {
	return serve(func(ctx *fasthttp.RequestCtx, conv string) {
		answerMessage(ctx, conv, 0)
	})
}

// StartOneRow serves posts that each append their body to one bucket, in group commits.
func StartOneRow(dir string) (string, func() error, error) {
	db, err := openBolt(dir, "one-row.db")
	if err != nil {
		return "", nil, err
	}
	rows := []byte("rows")
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(rows)
		return err
	}); err != nil {
		db.Close()
		return "", nil, err
	}
	l := startLoop(db, func(tx *bolt.Tx, batch []*post) error {
		b := tx.Bucket(rows)
		b.FillPercent = appendFill
		for _, p := range batch {
			n, err := b.NextSequence()
			if err != nil {
				return err
			}
			if err := b.Put(u64(n), p.body); err != nil {
				return err
			}
			p.seq = n
		}
		return nil
	})
	return serveLoop(db, l)
}

// StartPostRows serves posts that each write the rows of an Awardee post, in group commits.
func StartPostRows(dir string) (string, func() error, error) {
	db, err := openBolt(dir, "post-rows.db")
	if err != nil {
		return "", nil, err
	}
	buckets := [][]byte{bucketConvs, bucketActivity, bucketMsgs, bucketEvents}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, name := range buckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		_, err := tx.Bucket(bucketEvents).CreateBucketIfNotExists(orgID)
		return err
	}); err != nil {
		db.Close()
		return "", nil, err
	}
	// The loop owns this state, as the engine's unit owns the record it read: the last seq and
	// activity time of each conversation it has written to.
	convs := map[string]*convState{}
	l := startLoop(db, func(tx *bolt.Tx, batch []*post) error {
		return writePostRows(tx, convs, batch)
	})
	return serveLoop(db, l)
}

var (
	bucketConvs    = []byte("convs")
	bucketActivity = []byte("activity")
	bucketMsgs     = []byte("msgs")
	bucketEvents   = []byte("events")
	orgID          = []byte("org_01JAAAAAAAAAAAAAAAAAAAAAAA")
)

const (
	statusOpen = 1    // the open status's index byte in the activity index
	anyStatus  = 0xFF // the all-statuses entry of the activity index
)

type convState struct {
	seq          uint64
	lastActivity int64 // Unix ms; 0 before the first post
}

// writePostRows mimics the rows of engine.PostMessage for a text-only team reply: the
// conversation record read and rewritten, the message, its message.created event, and the
// conversation's two activity index entries deleted and put again at the new time.
func writePostRows(tx *bolt.Tx, convs map[string]*convState, batch []*post) error {
	cb, ab, mb := tx.Bucket(bucketConvs), tx.Bucket(bucketActivity), tx.Bucket(bucketMsgs)
	log := tx.Bucket(bucketEvents).Bucket(orgID)
	mb.FillPercent, log.FillPercent = appendFill, appendFill
	now := time.Now().UnixMilli()
	for _, p := range batch {
		st := convs[p.conv]
		if st == nil {
			st = &convState{}
			convs[p.conv] = st
		}
		convKey := append(append([]byte(nil), orgID...), p.conv...)
		_ = cb.Get(convKey) // the unit reads the record it changes
		if st.lastActivity != 0 {
			for _, sb := range []byte{anyStatus, statusOpen} {
				if err := ab.Delete(activityKey(sb, st.lastActivity, p.conv)); err != nil {
					return err
				}
			}
		}
		st.seq++
		st.lastActivity = now
		p.seq = st.seq
		if err := mb.Put(append([]byte(p.conv), u64(st.seq)...), filled(p.body, messageSize)); err != nil {
			return err
		}
		offset, err := log.NextSequence()
		if err != nil {
			return err
		}
		if err := log.Put(u64(offset), filled(p.body, eventSize)); err != nil {
			return err
		}
		if err := cb.Put(convKey, filled(p.body, conversationSize)); err != nil {
			return err
		}
		for _, sb := range []byte{anyStatus, statusOpen} {
			if err := ab.Put(activityKey(sb, now, p.conv), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// activityKey is the engine's layout: org · status byte · ^last_activity_ms · ^conv id.
func activityKey(status byte, atMs int64, conv string) []byte {
	k := make([]byte, 0, len(orgID)+1+8+len(conv))
	k = append(k, orgID...)
	k = append(k, status)
	k = binary.BigEndian.AppendUint64(k, math.MaxUint64-uint64(atMs))
	for i := 0; i < len(conv); i++ {
		k = append(k, ^conv[i])
	}
	return k
}

// filled is a value of n bytes starting with the post's body, so each row is as large as the
// engine's and carries something of the request.
func filled(body []byte, n int) []byte {
	v := make([]byte, n)
	copy(v, body)
	for i := min(len(body), n); i < n; i++ {
		v[i] = ' '
	}
	return v
}

func openBolt(dir, name string) (*bolt.DB, error) {
	// The engine's options: the map freelist, and a real fsync per commit.
	return bolt.Open(filepath.Join(dir, name), 0o600, &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType})
}

// post is one request waiting for its batch's fsync.
type post struct {
	conv string
	body []byte
	seq  uint64
	done chan error
}

// loop is the group commit: it takes every post queued while the previous fsync ran (up to
// maxBatch), writes them in one transaction, and answers each only after that commit returned.
type loop struct {
	db      *bolt.DB
	write   func(*bolt.Tx, []*post) error
	queue   chan *post
	mu      sync.Mutex // guards closed against a send on a closed queue
	closed  bool
	stopped chan struct{}
}

func startLoop(db *bolt.DB, write func(*bolt.Tx, []*post) error) *loop {
	l := &loop{db: db, write: write, queue: make(chan *post, maxBatch), stopped: make(chan struct{})}
	go l.run()
	return l
}

var errStopped = errors.New("stopped")

func (l *loop) submit(p *post) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errStopped
	}
	// Sending under the lock keeps close from racing the send; the loop drains the queue
	// without the lock, so a full queue only waits for the next batch.
	l.queue <- p
	l.mu.Unlock()
	return <-p.done
}

func (l *loop) run() {
	defer close(l.stopped)
	batch := make([]*post, 0, maxBatch)
	for {
		p, ok := <-l.queue
		if !ok {
			return
		}
		batch = append(batch[:0], p)
	drain:
		for len(batch) < maxBatch {
			select {
			case p, ok := <-l.queue:
				if !ok {
					break drain
				}
				batch = append(batch, p)
			default:
				break drain
			}
		}
		err := l.db.Update(func(tx *bolt.Tx) error { return l.write(tx, batch) })
		for _, p := range batch {
			p.done <- err
		}
		clear(batch)
	}
}

func (l *loop) stop() {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.queue)
	}
	l.mu.Unlock()
	<-l.stopped
}

func serveLoop(db *bolt.DB, l *loop) (string, func() error, error) {
	url, stopServer, err := serve(func(ctx *fasthttp.RequestCtx, conv string) {
		p := &post{conv: conv, body: append([]byte(nil), ctx.PostBody()...), done: make(chan error, 1)}
		if err := l.submit(p); err != nil {
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
			ctx.SetBodyString(`{"error":{"code":"unavailable","message":"the reference server could not commit"}}`)
			return
		}
		answerMessage(ctx, conv, p.seq)
	})
	if err != nil {
		l.stop()
		db.Close()
		return "", nil, err
	}
	return url, func() error {
		err := stopServer()
		l.stop()
		return errors.Join(err, db.Close())
	}, nil
}

// serve starts a fasthttp server on 127.0.0.1 that opens conversations at once and hands each
// message post to postMessage with the path's conversation id.
func serve(postMessage func(ctx *fasthttp.RequestCtx, conv string)) (string, func() error, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			path := string(ctx.Path())
			ctx.SetContentType("application/json")
			switch {
			case !ctx.IsPost():
				ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
			case path == "/conversations":
				ctx.SetStatusCode(fasthttp.StatusCreated)
				ctx.SetBodyString(`{"conversation":{"id":"` + newID("conv_") + `","status":"open"},"visitor_token":"vt_reference"}`)
			case strings.HasPrefix(path, "/conversations/") && strings.HasSuffix(path, "/messages"):
				conv := strings.TrimSuffix(strings.TrimPrefix(path, "/conversations/"), "/messages")
				if conv == "" || strings.Contains(conv, "/") {
					ctx.SetStatusCode(fasthttp.StatusNotFound)
					return
				}
				postMessage(ctx, conv)
			default:
				ctx.SetStatusCode(fasthttp.StatusNotFound)
			}
		},
		Name: "awardee-reference",
	}
	go func() { _ = srv.Serve(ln) }()
	url := "http://" + ln.Addr().String()
	return url, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.ShutdownWithContext(ctx)
	}, nil
}

// answerMessage writes a 201 whose body is about as long as Awardee's answer to a short post.
func answerMessage(ctx *fasthttp.RequestCtx, conv string, seq uint64) {
	ctx.SetStatusCode(fasthttp.StatusCreated)
	b := make([]byte, 0, messageSize)
	b = append(b, `{"id":"`...)
	b = append(b, newID("msg_")...)
	b = append(b, `","conversation_id":"`...)
	b = append(b, conv...)
	b = append(b, `","seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"role":"assistant","attachments":[],"metadata":{"source":"api"},"created_at":"`...)
	b = time.Now().UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","text":"`...)
	for len(b) < messageSize-2 {
		b = append(b, 'x')
	}
	b = append(b, `"}`...)
	ctx.SetBody(b)
}

// newID makes ids as the engine does, so each answer costs the same entropy and encoding.
func newID(prefix string) string { return prefix + ulid.Make().String() }

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// TempDir makes a directory for the reference databases inside parent (the filesystem whose disk
// is measured), or in the system's temporary directory when parent is empty.
func TempDir(parent string) (string, error) {
	dir, err := os.MkdirTemp(parent, "awardee-reference-")
	if err != nil {
		return "", fmt.Errorf("a directory for the reference servers: %w", err)
	}
	return dir, nil
}
