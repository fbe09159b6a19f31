// Package engine owns Awardee's domain: orgs, keys, conversations, messages and the org event
// log, the status machine, and their storage on bbolt behind one group-commit path. It knows
// nothing of HTTP, WebSockets or webhooks; those consume its results and its event feed.
package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
//	assets    org id · BLAKE3-256 of the bytes (32)          → Asset (JSON): the org's library
//	blob_refs BLAKE3-256 of the bytes (32)                    → uint64: orgs whose library holds the
//	          blob; the orphan sweeper deletes stored blobs without an entry
//	visitor_users org id · user id                          → conv id: a verified user's latest
//	          conversation (identity.go); followed while it is not closed or archived, replaced by
//	          the next one opened after that
//	meta      "count/" + status                               → uint64: conversations per status
//	          "usage/" + org id                               → Usage (JSON): billed asset bytes and count
//	          "schema"                                        → uint64: schemaVersion
//	          "identity/" + org id                            → IdentitySecret (JSON): the HMAC key of
//	          identity verification, stored as is (checking a hash needs it)
//	          "cursor_key"                                    → 32 random bytes: the MAC key of list cursors (cursor.go)
//	members   org id · member id                              → memberRecord (JSON): password as an argon2id hash
//	member_emails lower-cased email                           → org id · member id: emails are unique on the server
//	sessions  BLAKE3-256(session secret)                      → sessionRecord (JSON); secrets are never stored
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
	bucketAssets   = []byte("assets")
	bucketBlobRefs = []byte("blob_refs")
	// Members, sessions and verified visitors came after schema version 2 without changing any
	// layout above: Open creates their buckets in an older file, so they need no new version.
	bucketMembers      = []byte("members")
	bucketMemberEmails = []byte("member_emails")
	bucketSessions     = []byte("sessions")
	bucketVisitorUsers = []byte("visitor_users")
	allBuckets         = [][]byte{bucketOrgs, bucketKeys, bucketConvs, bucketActivity, bucketMsgs, bucketEvents, bucketIdem, bucketIdemTime, bucketMeta, bucketProbe, bucketAssets, bucketBlobRefs, bucketMembers, bucketMemberEmails, bucketSessions, bucketVisitorUsers}
)

const anyStatus = 0xFF

// appendFill is the page fill of the buckets that only grow at the end of a key range (an org's
// event log, a conversation's messages): bbolt's default of one half suits random inserts and
// leaves every page of an append-only range half empty, doubling the file and the pages written.
const appendFill = 0.95

// schemaVersion names the key layouts above. An older file is migrated at Open, in the same
// transaction that opens it, so it is either wholly of the old layout or wholly of the new one; a
// newer file is refused rather than misread (ErrNewerSchema). A change of layout bumps it and
// adds its step to migrations.
//
// Versions: 1, the first layout; 2, idempotency records gained a form byte after the fingerprint
// (and message.created events may reference their message instead of copying it, which
// version 1 events, carrying full data, need no change for).
const schemaVersion = 2

var schemaKey = []byte("schema")

// migrations[v] brings a file of version v to v+1 inside one write transaction.
var migrations = map[uint64]func(*bolt.Tx) error{
	1: migrateIdempotencyForms,
}

// schemaLayout is a version of the key layouts with the steps that bring older files to it:
// this build's, or one a test pretends a later build writes.
type schemaLayout struct {
	version uint64
	steps   map[uint64]func(*bolt.Tx) error
}

func (l *schemaLayout) orCurrent() schemaLayout {
	if l == nil {
		return schemaLayout{version: schemaVersion, steps: migrations}
	}
	return *l
}

// ErrNewerSchema is returned by Open for a file written by a newer build: an older binary never
// guesses at layouts it does not know.
var ErrNewerSchema = errors.New("the database was written by a newer version of awardee")

// ErrOlderSchema is returned by Open with NoMigrate for a file of an older schema.
var ErrOlderSchema = errors.New("the database is of an older version; start `awardee serve` once to migrate it (`awardee backup` first copies it as it is)")

// checkSchema stamps a new file, migrates an older one step by step (telling onMigrate first),
// and refuses a newer one.
func checkSchema(tx *bolt.Tx, layout schemaLayout, onMigrate func(from, to uint64), noMigrate bool) error {
	meta := tx.Bucket(bucketMeta)
	v := meta.Get(schemaKey)
	if v == nil {
		return meta.Put(schemaKey, u64(layout.version))
	}
	if len(v) != 8 {
		return fmt.Errorf("the database's schema version is damaged (%x)", v)
	}
	version := binary.BigEndian.Uint64(v)
	if version > layout.version {
		return fmt.Errorf("%w: schema version %d, this build reads up to %d", ErrNewerSchema, version, layout.version)
	}
	if version < layout.version && noMigrate {
		return fmt.Errorf("%w (schema version %d, this build writes %d)", ErrOlderSchema, version, layout.version)
	}
	if version < layout.version && onMigrate != nil {
		onMigrate(version, layout.version)
	}
	for ; version < layout.version; version++ {
		step := layout.steps[version]
		if step == nil {
			return fmt.Errorf("no migration from schema version %d", version)
		}
		if err := step(tx); err != nil {
			return fmt.Errorf("migrating schema version %d to %d: %w", version, version+1, err)
		}
	}
	return meta.Put(schemaKey, u64(layout.version))
}

// migrateIdempotencyForms gives every version 1 idempotency record (created · status ·
// fingerprint · body) the form byte of version 2, marking its body as stored in full.
func migrateIdempotencyForms(tx *bolt.Tx) error {
	records := tx.Bucket(bucketIdem)
	type rewrite struct{ key, value []byte }
	var rewrites []rewrite
	err := records.ForEach(func(k, v []byte) error {
		if len(v) < idemHeader-1 {
			return nil // too short to be a record of either version; Check reports it
		}
		nv := make([]byte, 0, len(v)+1)
		nv = append(nv, v[:idemHeader-1]...)
		nv = append(nv, idemBody)
		rewrites = append(rewrites, rewrite{append([]byte(nil), k...), append(nv, v[idemHeader-1:]...)})
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range rewrites {
		if err := records.Put(r.key, r.value); err != nil {
			return err
		}
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
	// OnMigrate, when set, is told before an older file is migrated to this build's layout, so
	// the caller can say so (and that `awardee backup` keeps a copy of the old file first).
	OnMigrate func(from, to uint64)
	// NoMigrate refuses an older file with ErrOlderSchema instead of migrating it: one-shot
	// commands leave the migration to serve, which says so in its log.
	NoMigrate bool

	// layout replaces this build's schema version and migrations: tests migrate today's files
	// to a layout no build writes yet.
	layout *schemaLayout
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
	// authGen grows with every revocation: a lookup that started before one does not cache
	// what it read, so a revoked key cannot come back from a read that raced its deletion.
	authGen        uint64
	realtimeTokens map[[32]byte]realtimeGrant

	cursorKey []byte // seals list cursors; made once per database
}

// DatabaseFile is the name of the bbolt file inside a data directory.
const DatabaseFile = "awardee.db"

// ErrDamaged marks a database file that cannot be trusted: empty, truncated, not a bbolt file,
// or with pages that do not decode. Open refuses such a file rather than crash on it later or
// make a fresh database in its place.
var ErrDamaged = errors.New("the database file is damaged")

// damageError names the damaged file and what is wrong with it, on one line, and says where to
// go from there.
type damageError struct {
	path   string
	reason string
}

func (e *damageError) Error() string {
	return fmt.Sprintf("%s: %v (%s); run `awardee check --data %s` to see what is wrong, and restore the last backup into a new data directory",
		e.path, ErrDamaged, e.reason, filepath.Dir(e.path))
}

func (e *damageError) Is(target error) bool { return target == ErrDamaged }

func damaged(path, reason string) error {
	return &damageError{path: path, reason: strings.Join(strings.Fields(reason), " ")}
}

// fullVerifyLimit is the largest file Open verifies page by page. The walk and bbolt's check
// read every branch and leaf page, so a larger file gets the cheap checks only, and
// `awardee check` verifies it in full. The walk runs on a read-only handle of its own, mapped
// with the kernel reading ahead (populateFlag), and closed before serving: a cold file is read
// at the disk's sequential speed rather than one page fault at a time (a start on a 50 MB file
// took 1.0-1.4 s from a cold cache, and takes 0.1-0.2 s read ahead), and the pages walked are
// not left mapped in the server, where they would count as its resident memory.
const fullVerifyLimit = 64 << 20

// Open opens (creating when missing) the database in dir and starts its commit loop. A missing
// file is created fresh; an existing file that is empty, truncated or damaged is refused with
// ErrDamaged and left as it is.
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
	b, err := openBolt(path, opts.LockTimeout, true)
	if err != nil {
		return nil, err
	}
	var cursorKey []byte
	err = recovered(func() error {
		return b.Update(func(tx *bolt.Tx) error {
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
			if err := checkSchema(tx, opts.layout.orCurrent(), opts.OnMigrate, opts.NoMigrate); err != nil {
				return err
			}
			key, err := ensureCursorKey(tx.Bucket(bucketMeta))
			cursorKey = key
			return err
		})
	})
	if err != nil {
		b.Close()
		if errors.As(err, new(pagePanic)) {
			return nil, damaged(path, err.Error())
		}
		return nil, err
	}
	db := &DB{bolt: b, path: path, feed: newFeed(), clock: opts.Now, plugins: plugins, authCache: make(map[[32]byte]authEntry), realtimeTokens: make(map[[32]byte]realtimeGrant), cursorKey: cursorKey}
	db.commits = startCommitter(db, opts.MaxBatch)
	return db, nil
}

// openBolt opens the bbolt file at path. An existing file is verified first: its size, then its
// pages, in full when verifyFully is set and the file is below fullVerifyLimit. bbolt panics on
// pages that do not decode; those panics end here as ErrDamaged.
func openBolt(path string, lockTimeout time.Duration, verifyFully bool) (*bolt.DB, error) {
	info, err := os.Stat(path)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if existed {
		if info.Size() == 0 {
			return nil, damaged(path, "the file is empty, 0 bytes; a new database is never made in its place")
		}
		// bbolt writes four pages when it creates a file; no database is shorter.
		if minSize := int64(4 * os.Getpagesize()); info.Size() < minSize {
			return nil, damaged(path, fmt.Sprintf("the file is %d bytes, shorter than any database (%d)", info.Size(), minSize))
		}
	}
	walked := existed && verifyFully && info.Size() <= fullVerifyLimit
	if walked {
		if err := verifyFile(path, info.Size(), lockTimeout); err != nil {
			return nil, err
		}
	}
	b, err := openFile(path, existed, &bolt.Options{Timeout: lockTimeout, FreelistType: bolt.FreelistMapType, NoSync: syncDisabled})
	if err != nil {
		return nil, err
	}
	if existed {
		// After a walk, the bucket roots need no second look: every page touched here stays
		// mapped in the server, counted in its resident memory (a whole folio of the page
		// cache at a time, 2 MiB after a read-ahead on Linux 6).
		depth := verifyRoots
		if walked {
			depth = verifySize
		}
		if err := verifyPages(b, info.Size(), depth); err != nil {
			b.Close()
			return nil, damaged(path, err.Error())
		}
	}
	return b, nil
}

// verifyFile walks every page of the file at path on a read-only handle that it closes again,
// so nothing of the walk stays mapped.
func verifyFile(path string, size int64, lockTimeout time.Duration) error {
	b, err := openFile(path, true, &bolt.Options{Timeout: lockTimeout, ReadOnly: true, MmapFlags: populateFlag})
	if err != nil {
		return err
	}
	defer b.Close()
	if err := verifyPages(b, size, verifyAll); err != nil {
		return damaged(path, err.Error())
	}
	return nil
}

// openFile runs bolt.Open, telling a file that is locked or damaged from other failures.
func openFile(path string, existed bool, opts *bolt.Options) (*bolt.DB, error) {
	var b *bolt.DB
	err := recovered(func() error {
		var err error
		b, err = bolt.Open(path, 0o600, opts)
		return err
	})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w", path, ErrLocked)
		}
		var osErr *fs.PathError
		if !existed || errors.As(err, &osErr) {
			return nil, err // not the file's content: permissions, a full disk, a new file that failed
		}
		return nil, damaged(path, err.Error())
	}
	return b, nil
}

// verifyDepth is how much of a file verifyPages reads.
type verifyDepth int

const (
	verifySize  verifyDepth = iota // the meta page's page count against the file's size
	verifyRoots                    // and the first and last page of every bucket
	verifyAll                      // and every page, then bbolt's own check
)

// verifyPages checks that the file holds every page its meta page counts (a truncated file does
// not), then reads as deep as depth says.
func verifyPages(b *bolt.DB, size int64, depth verifyDepth) error {
	return recovered(func() error {
		return b.View(func(btx *bolt.Tx) error {
			if reach := btx.Size(); reach > size {
				return fmt.Errorf("the file is %d bytes but its pages reach %d: it was truncated", size, reach)
			}
			switch depth {
			case verifyAll:
				if err := walkPages(btx); err != nil {
					return err
				}
				for err := range btx.Check() {
					return fmt.Errorf("bbolt check: %v", err)
				}
			case verifyRoots:
				return btx.ForEach(func(_ []byte, bk *bolt.Bucket) error {
					c := bk.Cursor()
					c.First()
					c.Last()
					return nil
				})
			}
			return nil
		})
	})
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

// BackupFile writes a consistent copy to path, fsync'd, via a temporary file beside it and a
// rename, so a crash never leaves a truncated backup under the final name, and no failure leaves
// the temporary copy behind. path must name a file (new or to replace), not a directory.
func (db *DB) BackupFile(path string) error { return writeBackup(db.bolt, path) }

func writeBackup(b *bolt.DB, path string) (err error) {
	if info, statErr := os.Stat(path); statErr == nil && info.IsDir() {
		return fmt.Errorf("%s is a directory; name the file to write, such as %s", path, filepath.Join(path, DatabaseFile))
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = b.View(func(tx *bolt.Tx) error { _, err := tx.WriteTo(f); return err }); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// SyncDir makes a rename into dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
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
