package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Tx is one write unit's view of a batch transaction. A unit reads what it needs through it,
// re-checks its rules against what it reads, and writes all of its rows; it must have no effect
// outside the transaction, because a batch that another unit fails is run again.
type Tx struct {
	db     *DB
	bolt   *bolt.Tx
	now    Time
	events []Event
	// stamp is now with its JSON, formatted once for the whole batch.
	stamp *stamp
	// eventID, when set, is the id of the next event the unit appends, drafted before the unit
	// ran so that the loop does not make it; appending the event clears it.
	eventID string
}

// Now is the unit's one timestamp: every message, event and activity time a unit writes shares
// it, so a takeover's status change, marker and reply carry the same instant.
func (tx *Tx) Now() Time { return tx.now }

// Unit is one atomic change. It runs inside the commit loop's transaction; returning an error
// rolls back its writes (and only its writes: the batch is re-run without it).
type Unit func(tx *Tx) error

type pending struct {
	unit   Unit
	done   chan error
	events []Event
}

// orgQueue holds one org's units waiting for a batch. slots bounds them: an org with that many
// queued waits in its own line, so a flood from one org never fills everyone's.
type orgQueue struct {
	units []*pending
	slots chan struct{}
}

// committer is the single owner of the database's write side: it takes the units queued while
// the previous fsync ran, runs them in one bbolt transaction, and answers each only after that
// transaction's fsync returned. Each batch takes units from every org with work in turn, one at
// a time, so an org with one unit queued behind another org's thousand is in the next batch.
type committer struct {
	db       *DB
	maxBatch int

	mu     sync.Mutex
	wake   *sync.Cond // signalled when a unit is queued or the loop must stop
	queues map[string]*orgQueue
	ready  []string // orgs with queued units, in the order the next batch serves them
	queued int
	closed bool

	stopped chan struct{}

	// convs is the loop goroutine's own: units read and write it without a lock.
	convs *convCache
	// events is the loop's buffer of a batch's events, handed to the feed after the commit.
	events []Event

	batches, units, failed atomic.Uint64

	// writeErr is the cause of the last failed commit, nil once a commit succeeds again.
	writeErr  atomic.Pointer[error]
	lastProbe atomic.Int64
}

// CommitStats counts the commit loop's work since Open: fsync'd batches, the units they carried,
// and units answered with an error.
type CommitStats struct {
	Batches, Units, Failed uint64
}

// Queued is how many units wait for the next batch right now.
func (db *DB) Queued() int {
	c := db.commits
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queued
}

// CommitStats returns the commit loop's counters.
func (db *DB) CommitStats() CommitStats {
	c := db.commits
	return CommitStats{Batches: c.batches.Load(), Units: c.units.Load(), Failed: c.failed.Load()}
}

func startCommitter(db *DB, maxBatch int) *committer {
	c := &committer{db: db, maxBatch: maxBatch, queues: make(map[string]*orgQueue), stopped: make(chan struct{}),
		convs: newConvCache(maxCachedConversations)}
	c.wake = sync.NewCond(&c.mu)
	go c.loop()
	return c
}

var (
	errShuttingDown = Errorf(CodeUnavailable, "the server is shutting down")
	errCommit       = Errorf(CodeUnavailable, "the database could not commit the write; nothing of it was stored")
)

// Update runs unit through the commit loop and returns once its transaction is fsync'd (nil) or
// it failed (its error; nothing of it was written). The events it appended are in the feed
// before Update returns.
func (db *DB) Update(ctx context.Context, unit Unit) error {
	return db.update(ctx, "", unit)
}

// update is Update for a unit of one org, which queues in that org's line.
func (db *DB) update(ctx context.Context, orgID string, unit Unit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := db.commits
	c.mu.Lock()
	q := c.queues[orgID]
	if q == nil {
		q = &orgQueue{slots: make(chan struct{}, c.maxBatch)}
		c.queues[orgID] = q
	}
	c.mu.Unlock()
	select {
	case q.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-q.slots }()
	p := pendings.Get().(*pending)
	p.unit = unit
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		p.unit = nil
		pendings.Put(p)
		return errShuttingDown
	}
	if len(q.units) == 0 {
		c.ready = append(c.ready, orgID)
	}
	q.units = append(q.units, p)
	c.queued++
	c.wake.Signal()
	c.mu.Unlock()
	// Once queued, the unit may commit whatever the caller does, so the answer is always awaited:
	// returning early on ctx would report a failure for data that is on disk.
	err := <-p.done
	// The loop sends on done last and never touches p after it, so p can serve another unit.
	p.unit, p.events = nil, nil
	pendings.Put(p)
	return err
}

// pendings recycles the queue entries and their answer channels: every write makes one, and a
// channel is emptied by the one receive its unit's answer takes.
var pendings = sync.Pool{New: func() any { return &pending{done: make(chan error, 1)} }}

func (c *committer) close() {
	c.mu.Lock()
	c.closed = true
	c.wake.Signal()
	c.mu.Unlock()
	<-c.stopped
}

func (c *committer) loop() {
	defer close(c.stopped)
	batch := make([]*pending, 0, c.maxBatch)
	for {
		batch = c.take(batch[:0])
		if len(batch) == 0 {
			return
		}
		c.run(batch)
		clear(batch) // drop the answered units' events
	}
}

// take waits for queued units and appends the next batch to batch: one unit of each ready org in
// turn until the batch is full. It returns an empty batch once the loop is closed and drained.
func (c *committer) take(batch []*pending) []*pending {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.queued == 0 {
		if c.closed {
			return batch
		}
		c.wake.Wait()
	}
	i := 0
	for len(batch) < c.maxBatch && len(c.ready) > 0 {
		if i >= len(c.ready) {
			i = 0
		}
		org := c.ready[i]
		q := c.queues[org]
		batch = append(batch, q.units[0])
		q.units[0] = nil
		q.units = q.units[1:]
		c.queued--
		if len(q.units) == 0 {
			q.units = nil
			c.ready = append(c.ready[:i], c.ready[i+1:]...)
		} else {
			i++
		}
	}
	// The next batch starts with the org after the last one served here.
	if i > 0 && i < len(c.ready) {
		c.ready = append(c.ready[i:], c.ready[:i]...)
	}
	return batch
}

// errUnitFailed aborts a batch transaction after one unit failed; that unit is answered and the
// rest run again, since bbolt has no savepoints to roll back one unit alone.
var errUnitFailed = errors.New("unit failed")

func (c *committer) run(batch []*pending) {
	for len(batch) > 0 {
		failed := -1
		var unitErr error
		now := c.db.now()
		at := newStamp(now)
		err := c.db.commit(func(btx *bolt.Tx) error {
			for i, p := range batch {
				tx := &Tx{db: c.db, bolt: btx, now: now, stamp: at}
				if err := callUnit(p.unit, tx); err != nil {
					failed, unitErr = i, err
					return errUnitFailed
				}
				p.events = tx.events
			}
			return nil
		})
		if err != nil {
			c.convs.rolledBack()
		}
		if failed >= 0 {
			c.failed.Add(1)
			batch[failed].done <- unitErr
			batch = append(batch[:failed], batch[failed+1:]...)
			continue
		}
		if err != nil {
			// The commit itself failed (disk full, I/O error, a damaged page): bbolt rolled
			// everything back. The cause is for the log; the callers learn only that nothing
			// was stored.
			c.convs.failed()
			c.writeErr.Store(&err)
			c.lastProbe.Store(time.Now().UnixNano())
			fail := errCommit.WithCause(err)
			c.failed.Add(uint64(len(batch)))
			for _, p := range batch {
				p.done <- fail
			}
			return
		}
		c.convs.committedBatch()
		c.writeErr.Store(nil)
		c.batches.Add(1)
		c.units.Add(uint64(len(batch)))
		events := c.events[:0]
		for _, p := range batch {
			events = append(events, p.events...)
		}
		c.db.feed.publish(events)
		// The feed keeps copies: the slice serves the next batch, without this one's data.
		clear(events)
		c.events = events[:0]
		for _, p := range batch {
			p.done <- nil
		}
		return
	}
}

// commit runs one bbolt write transaction. bbolt panics on some damaged pages; its Update rolls
// the transaction back as the panic unwinds, so the panic is turned into this batch's error and
// the process and the file stay as the last good commit left them.
func (db *DB) commit(fn func(*bolt.Tx) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bbolt panicked during a write transaction: %v\n%s", r, debug.Stack())
		}
	}()
	return db.bolt.Update(fn)
}

// callUnit turns a panicking unit into an internal error of that unit alone, so one bug cannot
// take its batch neighbours (or the loop) down with it. The panic and its stack are the error's
// cause, for the log.
func callUnit(u Unit, tx *Tx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = (&Error{Code: CodeInternal, Message: "Internal error."}).
				WithCause(fmt.Errorf("write unit panicked: %v\n%s", r, debug.Stack()))
		}
	}()
	return u(tx)
}

// probeInterval bounds how often WriteHealth tries a write while the last commit failed, and
// probeSize is that write: as large as the largest request body, so that a success means a real
// write fits again, not merely a few bytes into a page that happened to be free.
const (
	probeInterval = time.Second
	probeSize     = 1 << 20
)

var probeKey = []byte("probe")

// WriteHealth reports whether writes can commit: nil after the last commit succeeded, an
// unavailable error (its cause is the failure, for the log) after one failed or once the loop is
// closed. While unhealthy it tries a write of probeSize at most once a second (the first a second
// after the failure), so that a disk that has room again is seen without waiting for client
// traffic. The probe's value replaces the previous one, so probes never grow the file.
func (db *DB) WriteHealth(ctx context.Context) error {
	c := db.commits
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return errShuttingDown
	}
	last := c.writeErr.Load()
	if last == nil {
		return nil
	}
	now := time.Now().UnixNano()
	if prev := c.lastProbe.Load(); now-prev >= int64(probeInterval) && c.lastProbe.CompareAndSwap(prev, now) {
		err := db.Update(ctx, func(tx *Tx) error {
			return tx.bolt.Bucket(bucketProbe).Put(probeKey, make([]byte, probeSize))
		})
		if err == nil {
			return nil
		}
	}
	if last = c.writeErr.Load(); last == nil {
		return nil
	}
	return errCommit.WithCause(*last)
}
