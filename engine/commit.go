package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"

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
}

// Now is the unit's one timestamp: every message, event and activity time a unit writes shares
// it, so a takeover's status change, marker and reply carry the same instant.
func (tx *Tx) Now() Time { return tx.now }

// Bolt exposes the underlying transaction so packages that plug into a unit (the webhook outbox)
// can keep their rows in their own buckets.
func (tx *Tx) Bolt() *bolt.Tx { return tx.bolt }

// Unit is one atomic change. It runs inside the commit loop's transaction; returning an error
// rolls back its writes (and only its writes: the batch is re-run without it).
type Unit func(tx *Tx) error

type pending struct {
	unit   Unit
	done   chan error
	events []Event
}

// committer is the single owner of the database's write side: it takes every unit queued while
// the previous fsync ran, runs them in one bbolt transaction, and answers each only after that
// transaction's fsync returned.
type committer struct {
	db       *DB
	maxBatch int
	queue    chan *pending
	mu       sync.RWMutex // guards closed against sends on a closed queue
	closed   bool
	stopped  chan struct{}

	subMu       sync.RWMutex
	subscribers []func([]Event)

	batches, units, failed atomic.Uint64
}

// CommitStats counts the commit loop's work since Open: fsync'd batches, the units they carried,
// and units answered with an error.
type CommitStats struct {
	Batches, Units, Failed uint64
}

// Queued is how many units wait for the next batch right now.
func (db *DB) Queued() int { return len(db.commits.queue) }

// CommitStats returns the commit loop's counters.
func (db *DB) CommitStats() CommitStats {
	c := db.commits
	return CommitStats{Batches: c.batches.Load(), Units: c.units.Load(), Failed: c.failed.Load()}
}

func startCommitter(db *DB, maxBatch int) *committer {
	c := &committer{db: db, maxBatch: maxBatch, queue: make(chan *pending, maxBatch), stopped: make(chan struct{})}
	go c.loop()
	return c
}

var errShuttingDown = Errorf(CodeUnavailable, "the server is shutting down")

// Update runs unit through the commit loop and returns once its transaction is fsync'd (nil) or
// it failed (its error; nothing of it was written). The events it appended are published to
// subscribers, in offset order, before Update returns.
func (db *DB) Update(ctx context.Context, unit Unit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p := &pending{unit: unit, done: make(chan error, 1)}
	c := db.commits
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return errShuttingDown
	}
	c.queue <- p
	c.mu.RUnlock()
	// Once queued, the unit may commit whatever the caller does, so the answer is always awaited:
	// returning early on ctx would report a failure for data that is on disk.
	return <-p.done
}

// Subscribe registers fn to receive every committed batch's events in offset order. fn runs on the
// commit loop and must not block: copy and hand off.
func (db *DB) Subscribe(fn func([]Event)) {
	c := db.commits
	c.subMu.Lock()
	c.subscribers = append(c.subscribers, fn)
	c.subMu.Unlock()
}

func (c *committer) close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.queue)
	}
	c.mu.Unlock()
	<-c.stopped
}

func (c *committer) loop() {
	defer close(c.stopped)
	batch := make([]*pending, 0, c.maxBatch)
	for first := range c.queue {
		batch = append(batch[:0], first)
	drain:
		for len(batch) < c.maxBatch {
			select {
			case p, ok := <-c.queue:
				if !ok {
					break drain
				}
				batch = append(batch, p)
			default:
				break drain
			}
		}
		c.run(batch)
	}
}

// errUnitFailed aborts a batch transaction after one unit failed; that unit is answered and the
// rest run again, since bbolt has no savepoints to roll back one unit alone.
var errUnitFailed = errors.New("unit failed")

func (c *committer) run(batch []*pending) {
	for len(batch) > 0 {
		failed := -1
		var unitErr error
		err := c.db.bolt.Update(func(btx *bolt.Tx) error {
			for i, p := range batch {
				tx := &Tx{db: c.db, bolt: btx, now: Now()}
				if err := callUnit(p.unit, tx); err != nil {
					failed, unitErr = i, err
					return errUnitFailed
				}
				p.events = tx.events
			}
			return nil
		})
		if failed >= 0 {
			c.failed.Add(1)
			batch[failed].done <- unitErr
			batch = append(batch[:failed], batch[failed+1:]...)
			continue
		}
		if err != nil {
			// The commit itself failed (disk full, I/O error): bbolt rolled everything back.
			fail := &Error{Code: CodeUnavailable, Message: "the database could not commit: " + err.Error()}
			c.failed.Add(uint64(len(batch)))
			for _, p := range batch {
				p.done <- fail
			}
			return
		}
		c.batches.Add(1)
		c.units.Add(uint64(len(batch)))
		c.publish(batch)
		for _, p := range batch {
			p.done <- nil
		}
		return
	}
}

func (c *committer) publish(batch []*pending) {
	c.subMu.RLock()
	subs := c.subscribers
	c.subMu.RUnlock()
	if len(subs) == 0 {
		return
	}
	var events []Event
	for _, p := range batch {
		events = append(events, p.events...)
	}
	if len(events) == 0 {
		return
	}
	for _, fn := range subs {
		fn(events)
	}
}

// callUnit turns a panicking unit into an error of that unit alone, so one bug cannot take its
// batch neighbours (or the loop) down with it.
func callUnit(u Unit, tx *Tx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("write unit panicked: %v\n%s", r, debug.Stack())
		}
	}()
	return u(tx)
}
