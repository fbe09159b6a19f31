package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Snapshot is one read transaction's view of the whole database, for a backup: the file it
// writes and the blobs it names are of the same instant. It is valid only inside the function
// given to DB.Snapshot or SnapshotDir.
type Snapshot struct{ tx *bolt.Tx }

// Size is the number of bytes WriteTo writes: a copy of the file as of the snapshot.
func (s Snapshot) Size() int64 { return s.tx.Size() }

// WriteTo writes a working database file, of the snapshot's instant, to w.
func (s Snapshot) WriteTo(w io.Writer) (int64, error) { return s.tx.WriteTo(w) }

// Blobs lists the BLAKE3-256 hashes of every blob some org's library held at the snapshot, in
// hash order. Libraries only grow, so each of these blobs is still stored after the snapshot
// ends: a backup may copy them later and still match its database.
func (s Snapshot) Blobs() [][32]byte {
	refs := s.tx.Bucket(bucketBlobRefs)
	if refs == nil {
		return nil
	}
	var hashes [][32]byte
	_ = refs.ForEach(func(k, _ []byte) error {
		if len(k) == 32 {
			hashes = append(hashes, [32]byte(k))
		}
		return nil
	})
	return hashes
}

// Readable refuses a snapshot this build cannot serve: one of a newer schema (ErrNewerSchema)
// or without a readable version. An older one is readable: serve migrates it.
func (s Snapshot) Readable() error {
	meta := s.tx.Bucket(bucketMeta)
	if meta == nil {
		return errors.New("the database has no meta bucket: it is not an awardee database")
	}
	v := meta.Get(schemaKey)
	if len(v) != 8 {
		return fmt.Errorf("the database's schema version is missing or damaged (%x)", v)
	}
	if version := binary.BigEndian.Uint64(v); version > schemaVersion {
		return fmt.Errorf("%w: schema version %d, this build reads up to %d", ErrNewerSchema, version, schemaVersion)
	}
	return nil
}

// Snapshot runs fn in one read transaction. It never waits for the commit loop, and the commit
// loop never waits for it, except that bbolt cannot grow its memory map while any read
// transaction is open: keep fn short (copy the file locally, then send the copy).
func (db *DB) Snapshot(fn func(Snapshot) error) error {
	return db.view(func(tx *bolt.Tx) error { return recovered(func() error { return fn(Snapshot{tx}) }) })
}

// SnapshotDir runs fn in a read transaction of a stopped server's database in dir, opened
// read-only: a file of an older schema is seen as it is, not migrated, so a copy of it is the
// way back to the binary that wrote it. A server holding the directory makes it fail with
// ErrLocked; a damaged file with ErrDamaged.
func SnapshotDir(dir string, lockTimeout time.Duration, fn func(Snapshot) error) error {
	file := filepath.Join(dir, DatabaseFile)
	if _, err := os.Stat(file); err != nil {
		return err
	}
	b, err := openReadOnly(file, lockTimeout)
	if err != nil {
		return err
	}
	defer b.Close()
	return recovered(func() error {
		return b.View(func(tx *bolt.Tx) error { return fn(Snapshot{tx}) })
	})
}

// EnsureNotServed fails with ErrLocked when a process holds the database in dir, so a restore
// never replaces a directory under a running server. A missing or damaged file is not served.
func EnsureNotServed(dir string, lockTimeout time.Duration) error {
	file := filepath.Join(dir, DatabaseFile)
	if _, err := os.Stat(file); err != nil {
		return nil
	}
	b, err := openReadOnly(file, lockTimeout)
	if errors.Is(err, ErrLocked) {
		return err
	}
	if err == nil {
		b.Close()
	}
	return nil
}

// openReadOnly opens the database file read-only, which waits for no reader but for a writer
// (a server) up to lockTimeout: ErrLocked then, ErrDamaged for a file bbolt cannot open.
func openReadOnly(file string, lockTimeout time.Duration) (*bolt.DB, error) {
	var b *bolt.DB
	err := recovered(func() error {
		var err error
		b, err = bolt.Open(file, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
		return err
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%s: %w", file, ErrLocked)
	}
	if err != nil {
		return nil, damaged(file, err.Error())
	}
	return b, nil
}

// VerifyDir checks the stopped database in dir as `awardee check` does, and refuses one this
// build cannot serve (ErrNewerSchema), without changing the file. The checks know this build's
// layouts only, so a file of an older schema is checked on a migrated scratch copy made in
// scratchParent and removed afterwards: the file itself stays as it is, still readable by the
// binary that wrote it.
func VerifyDir(dir, scratchParent string, lockTimeout time.Duration) ([]error, error) {
	var version uint64
	err := SnapshotDir(dir, lockTimeout, func(s Snapshot) error {
		if err := s.Readable(); err != nil {
			return err
		}
		version = binary.BigEndian.Uint64(s.tx.Bucket(bucketMeta).Get(schemaKey))
		return nil
	})
	if errors.Is(err, ErrDamaged) {
		return CheckDir(dir, lockTimeout) // names what is wrong as check does
	}
	if err != nil {
		return nil, err
	}
	if version == schemaVersion {
		return CheckDir(dir, lockTimeout)
	}
	scratch, err := os.MkdirTemp(scratchParent, ".awardee-verify-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	err = SnapshotDir(dir, lockTimeout, func(s Snapshot) error {
		f, err := os.OpenFile(filepath.Join(scratch, DatabaseFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = s.WriteTo(f)
		return errors.Join(err, f.Close())
	})
	if err != nil {
		return nil, err
	}
	db, err := Open(scratch, Options{LockTimeout: lockTimeout})
	if err != nil {
		return []error{fmt.Errorf("migrating a copy from schema version %d: %v", version, err)}, nil
	}
	problems := db.Check()
	return problems, db.Close()
}
