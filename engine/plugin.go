package engine

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Bucket is a plug-in's narrow handle on one bucket it declared in Options.Buckets: keys and
// values and nothing else of the file, so a plug-in can neither touch the engine's rows nor open
// a transaction of its own. Slices it returns are valid only inside the transaction.
type Bucket struct{ b *bolt.Bucket }

// Bucket returns the unit's handle on a declared plug-in bucket; its writes commit or roll back
// with the unit.
func (tx *Tx) Bucket(name string) (Bucket, error) {
	if !tx.db.plugins[name] {
		return Bucket{}, fmt.Errorf("bucket %q was not declared in Options.Buckets", name)
	}
	return Bucket{tx.bolt.Bucket([]byte(name))}, nil
}

// ViewBucket runs fn over a consistent read-only view of a declared plug-in bucket.
func (db *DB) ViewBucket(name string, fn func(Bucket) error) error {
	if !db.plugins[name] {
		return fmt.Errorf("bucket %q was not declared in Options.Buckets", name)
	}
	return db.view(func(btx *bolt.Tx) error { return fn(Bucket{btx.Bucket([]byte(name))}) })
}

// Get returns the value under key, nil when there is none.
func (b Bucket) Get(key []byte) []byte { return b.b.Get(key) }

// Put stores value under key. It fails in a read-only view.
func (b Bucket) Put(key, value []byte) error { return b.b.Put(key, value) }

// Delete removes key. It fails in a read-only view.
func (b Bucket) Delete(key []byte) error { return b.b.Delete(key) }

// NextSequence returns the bucket's next integer, for keys that must grow (delivery numbers).
func (b Bucket) NextSequence() (uint64, error) { return b.b.NextSequence() }

// Scan calls fn for every key from start (inclusive; nil is the first) in byte order until fn
// returns false or an error.
func (b Bucket) Scan(start []byte, fn func(key, value []byte) (bool, error)) error {
	c := b.b.Cursor()
	var k, v []byte
	if start == nil {
		k, v = c.First()
	} else {
		k, v = c.Seek(start)
	}
	for ; k != nil; k, v = c.Next() {
		more, err := fn(k, v)
		if err != nil || !more {
			return err
		}
	}
	return nil
}
