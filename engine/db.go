// Package engine owns Awardee's domain: orgs, keys, conversations, messages and the org event
// log, the status machine, and their storage on bbolt behind one group-commit path. It knows
// nothing of HTTP, WebSockets or webhooks; those consume its results and its event feed.
package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/zeebo/blake3"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Bucket names and key layouts. Integers are big-endian so bbolt's byte order is the domain's
// order; IDs have a fixed length per kind (prefix + 26-char ULID), so keys need no separators.
//
//	orgs      org id                                          → Org (JSON)
//	keys      BLAKE3-256(secret)                              → Principal (JSON); secrets are never stored
//	convs     org id · conv id                                → conversationRecord (JSON)
//	activity  org id · status byte · ^last_activity_ms · ^conv id → empty: "newest activity first"
//	          (^ = bitwise complement, so larger sorts first);
//	          status byte is the index in Statuses, or anyStatus for the all-statuses list
//	msgs      conv id · seq                                   → Message (JSON)
//	events    org id (nested bucket) › offset                 → storedEvent (JSON); the nested
//	          bucket's own sequence hands out offsets, so they roll back with a failed batch and are
//	          never reused after pruning. One bucket per org keeps each log a contiguous range to
//	          scan and prune without touching other orgs.
//	idem      org id · idempotency key                        → IdempotencyRecord (binary, see idem.go);
//	          keys of visitor and widget requests carry their own scope (see the HTTP layer)
//	idem_time created_ms · org id · idempotency key            → empty: expiry order for the sweeper
//	meta      "count/" + status                               → uint64: conversations per status
//	          "schema"                                        → uint64: schemaVersion
//	probe     "probe"                                         → probeSize zero bytes: the write that
//	          tells a full disk from one with room again (its own bucket, so no other write rewrites it)
//
// Plug-in buckets: a package that keeps rows of its own (webhook endpoints and their cursors)
// declares its buckets in Options.Buckets and reaches them only through Tx.Bucket and
// DB.ViewBucket. Their layouts are written here too, so every key of the file is in one place:
//
//	hook_endpoints   org id · endpoint id                  → webhook endpoint (JSON, with its secret)
//	hook_cursors     org id · endpoint id                  → offset (8, BE): the last event the
//	                 endpoint's worker handled (delivered, filtered out, or parked in hook_owed)
//	hook_deliveries  org id · endpoint id · ^ULID (16)     → delivery with its attempts (JSON); the
//	                 delivery id's ULID complemented, so an endpoint's rows sort newest first
//	hook_owed        org id · endpoint id · offset (8, BE) → state (1: 'p' pending, 'f' failed) ·
//	                 next attempt unix ms (8, BE) · delivery id: deliveries waiting for a retry or
//	                 failed and kept for a manual one; their events are kept from pruning
var (
	bucketOrgs     = []byte("orgs")
	bucketKeys     = []byte("keys")
	bucketConvs    = []byte("convs")
	bucketActivity = []byte("activity")
	bucketMsgs     = []byte("msgs")
	bucketEvents   = []byte("events")
	bucketIdem     = []byte("idem")
	bucketIdemTime = []byte("idem_time")
	bucketMeta     = []byte("meta")
	bucketProbe    = []byte("probe")
	allBuckets     = [][]byte{bucketOrgs, bucketKeys, bucketConvs, bucketActivity, bucketMsgs, bucketEvents, bucketIdem, bucketIdemTime, bucketMeta, bucketProbe}
)

const anyStatus = 0xFF

// appendFill is the page fill of the buckets that only grow at the end of a key range (an org's
// event log, a conversation's messages): bbolt's default of one half suits random inserts and
// leaves every page of an append-only range half empty, doubling the file and the pages written.
const appendFill = 0.95

// schemaVersion names the key layouts above. A database written with other layouts is refused
// rather than misread; a change of layout bumps it and adds a migration here.
const schemaVersion = 1

var schemaKey = []byte("schema")

func checkSchema(meta *bolt.Bucket) error {
	v := meta.Get(schemaKey)
	if v == nil {
		return meta.Put(schemaKey, u64(schemaVersion))
	}
	if len(v) != 8 || binary.BigEndian.Uint64(v) != schemaVersion {
		return fmt.Errorf("the database has an unknown schema version %x (this build reads %d)", v, schemaVersion)
	}
	return nil
}

// ErrLocked is returned by Open when another process holds the database.
var ErrLocked = errors.New("the database is in use by another process (is a server running on this data directory?)")

// Options tune Open. The zero value is usable.
type Options struct {
	// LockTimeout bounds the wait for another process's lock on the file.
	LockTimeout time.Duration
	// MaxBatch caps how many write units one commit takes, bounding a batch's latency; it is
	// also how many units one org may have queued before its next caller waits.
	MaxBatch int
	// Now is the clock of every time the engine stamps or compares (creation, activity, expiry
	// of idempotency records and cached keys, pruning cutoffs); nil is time.Now. Tests inject one
	// to step through hours without waiting.
	Now func() time.Time
	// Buckets are the plug-in buckets to create and allow (see the layout comment above).
	Buckets []string
}

// DB is an open Awardee database. All writes go through its commit loop; reads run in their own
// read transactions and never wait for it.
type DB struct {
	bolt *bolt.DB
	path string

	commits *committer
	feed    *feed
	clock   func() time.Time
	plugins map[string]bool

	authMu    sync.Mutex
	authCache map[[32]byte]authEntry
}

// DatabaseFile is the name of the bbolt file inside a data directory.
const DatabaseFile = "awardee.db"

// Open opens (creating when missing) the database in dir and starts its commit loop.
func Open(dir string, opts Options) (*DB, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 1024
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	plugins := make(map[string]bool, len(opts.Buckets))
	for _, name := range opts.Buckets {
		if name == "" || slices.ContainsFunc(allBuckets, func(b []byte) bool { return string(b) == name }) {
			return nil, fmt.Errorf("plug-in bucket name %q is empty or taken by the engine", name)
		}
		plugins[name] = true
	}
	path := filepath.Join(dir, DatabaseFile)
	b, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w", path, ErrLocked)
		}
		return nil, err
	}
	err = b.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		for name := range plugins {
			if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
				return err
			}
		}
		return checkSchema(tx.Bucket(bucketMeta))
	})
	if err != nil {
		b.Close()
		return nil, err
	}
	db := &DB{bolt: b, path: path, feed: newFeed(), clock: opts.Now, plugins: plugins, authCache: make(map[[32]byte]authEntry)}
	db.commits = startCommitter(db, opts.MaxBatch)
	return db, nil
}

// Close stops the commit loop after every queued unit is answered, then closes the file.
func (db *DB) Close() error {
	db.commits.close()
	return db.bolt.Close()
}

// Path is the database file's path.
func (db *DB) Path() string { return db.path }

// Backup writes a consistent copy of the whole database to w from one read transaction.
func (db *DB) Backup(w io.Writer) (int64, error) {
	var n int64
	err := db.view(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// BackupFile writes a consistent copy to path, fsync'd, via a temporary file and a rename, so a
// crash never leaves a truncated backup under the final name.
func (db *DB) BackupFile(path string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := db.Backup(f); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func join(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// now is the engine's clock, truncated to what the wire format carries so that a stored time and
// its rendering never disagree.
func (db *DB) now() Time { return Time{db.clock().UTC().Truncate(time.Millisecond)} }

func hashSecret(secret string) [32]byte { return blake3.Sum256([]byte(secret)) }

// view runs a read transaction. A database already closed by shutdown answers unavailable, like
// a write would, rather than an internal error.
func (db *DB) view(fn func(*bolt.Tx) error) error {
	err := db.bolt.View(fn)
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return errShuttingDown
	}
	return err
}
