package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Idempotency asks a write to store its outcome under an org-scoped key in the same transaction
// as its effects, so a crash can never keep one without the other.
type Idempotency struct {
	Key         string
	Fingerprint [32]byte // BLAKE3 of method, path and body, computed by the caller
	Status      int      // the status the caller answers a success with

	// Stored is set by the write to the body it stored, so the caller answers with exactly the
	// bytes a replay will return.
	Stored []byte
}

// IdempotencyRecord is a stored outcome, replayed byte for byte.
type IdempotencyRecord struct {
	Fingerprint []byte
	Status      int
	Body        []byte
	CreatedAt   Time
}

// The stored form is binary, not JSON: the body is already JSON, and wrapping it again would
// escape or base64 it on the hot path. Layout: created_at unix ms (8, BE) · status (2, BE) ·
// fingerprint (32) · body.
const idemHeader = 8 + 2 + 32

func (r IdempotencyRecord) encode() []byte {
	out := make([]byte, idemHeader, idemHeader+len(r.Body))
	binary.BigEndian.PutUint64(out[0:8], uint64(r.CreatedAt.UnixMilli()))
	binary.BigEndian.PutUint16(out[8:10], uint16(r.Status))
	copy(out[10:idemHeader], r.Fingerprint)
	return append(out, r.Body...)
}

func decodeIdempotency(raw []byte) (IdempotencyRecord, error) {
	if len(raw) < idemHeader {
		return IdempotencyRecord{}, errors.New("idempotency record is truncated")
	}
	return IdempotencyRecord{
		CreatedAt:   Time{time.UnixMilli(int64(binary.BigEndian.Uint64(raw[0:8]))).UTC()},
		Status:      int(binary.BigEndian.Uint16(raw[8:10])),
		Fingerprint: append([]byte(nil), raw[10:idemHeader]...),
		Body:        append([]byte(nil), raw[idemHeader:]...),
	}, nil
}

// idemCreatedAt reads only the time of a stored record, for sweeps.
func idemCreatedAt(raw []byte) (time.Time, bool) {
	if len(raw) < 8 {
		return time.Time{}, false
	}
	return time.UnixMilli(int64(binary.BigEndian.Uint64(raw[0:8]))), true
}

func idemKey(orgID, key string) []byte { return []byte(orgID + key) }

// saveIdempotency stores result (as the JSON the caller will answer with) under idem's key; a nil
// idem stores nothing.
func (tx *Tx) saveIdempotency(orgID string, idem *Idempotency, result any) error {
	if idem == nil {
		return nil
	}
	body, err := json.Marshal(result)
	if err != nil {
		return err
	}
	return tx.putIdempotency(orgID, idem, idem.Status, body)
}

// putIdempotency stores the record and its entry in the time index (replacing the entry of an
// expired record it overwrites), and hands the stored body back through idem.Stored.
func (tx *Tx) putIdempotency(orgID string, idem *Idempotency, status int, body []byte) error {
	key := idemKey(orgID, idem.Key)
	records, byTime := tx.bolt.Bucket(bucketIdem), tx.bolt.Bucket(bucketIdemTime)
	if at, ok := idemCreatedAt(records.Get(key)); ok {
		if err := byTime.Delete(join(u64(uint64(at.UnixMilli())), key)); err != nil {
			return err
		}
	}
	rec := IdempotencyRecord{Fingerprint: idem.Fingerprint[:], Status: status, Body: body, CreatedAt: tx.now}
	if err := records.Put(key, rec.encode()); err != nil {
		return err
	}
	if err := byTime.Put(join(u64(uint64(tx.now.UnixMilli())), key), nil); err != nil {
		return err
	}
	idem.Stored = body
	return nil
}

// SaveOutcome stores a finished request's outcome that had no effect to commit with it (a 4xx),
// so that a retry with the same key gets the same answer.
func (db *DB) SaveOutcome(ctx context.Context, orgID string, idem *Idempotency, status int, body []byte) error {
	return db.update(ctx, orgID, func(tx *Tx) error { return tx.putIdempotency(orgID, idem, status, body) })
}

// LookupIdempotency returns the live record under orgID's key, or nil when there is none or it
// is older than ttl (an expired key runs afresh, and its record is overwritten).
func (db *DB) LookupIdempotency(orgID, key string, ttl time.Duration) (*IdempotencyRecord, error) {
	var rec *IdempotencyRecord
	err := db.view(func(btx *bolt.Tx) error {
		raw := btx.Bucket(bucketIdem).Get(idemKey(orgID, key))
		if raw == nil {
			return nil
		}
		r, err := decodeIdempotency(raw)
		if err != nil {
			return nil // a damaged record is no record: the request runs and overwrites it
		}
		if db.clock().Sub(r.CreatedAt.Time) < ttl {
			rec = &r
		}
		return nil
	})
	return rec, err
}

// Matches reports whether a request's fingerprint is the one the record was stored for.
func (r *IdempotencyRecord) Matches(fp [32]byte) bool { return bytes.Equal(r.Fingerprint, fp[:]) }

// PruneIdempotency deletes records older than ttl, oldest first along the time index, at most
// pruneChunk per unit so a large sweep never holds the commit loop for long. It looks in a read
// transaction first, so a sweep with nothing to do writes nothing.
func (db *DB) PruneIdempotency(ctx context.Context, ttl time.Duration) (int, error) {
	cutoff := u64(uint64(db.clock().Add(-ttl).UnixMilli()))
	expired := func(k []byte) bool { return k != nil && bytes.Compare(k[:8], cutoff) < 0 }
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		var due bool
		db.view(func(btx *bolt.Tx) error {
			k, _ := btx.Bucket(bucketIdemTime).Cursor().First()
			due = expired(k)
			return nil
		})
		if !due {
			return total, nil
		}
		n := 0
		err := db.Update(ctx, func(tx *Tx) error {
			n = 0
			records, byTime := tx.bolt.Bucket(bucketIdem), tx.bolt.Bucket(bucketIdemTime)
			c := byTime.Cursor()
			for k, _ := c.First(); expired(k) && n < pruneChunk; k, _ = c.First() {
				if err := records.Delete(k[8:]); err != nil {
					return err
				}
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
	}
}

// Maintenance configures RunMaintenance.
type Maintenance struct {
	EventRetention time.Duration
	IdempotencyTTL time.Duration
	Every          time.Duration
	// KeepFrom, when set, gives the lowest offset of an org's log still owed to a consumer (a
	// webhook cursor or retry); the event pruner keeps it and everything after it.
	KeepFrom func(orgID string) uint64
	// OnError reports a failed sweep; the next tick tries again.
	OnError func(what string, err error)
}

// RunMaintenance prunes expired events and idempotency records at once and then every m.Every,
// until ctx ends; it returns only then.
func (db *DB) RunMaintenance(ctx context.Context, m Maintenance) {
	report := func(what string, err error) {
		if err != nil && ctx.Err() == nil && m.OnError != nil {
			m.OnError(what, err)
		}
	}
	sweepEvery(ctx, m.Every, func(ctx context.Context) {
		_, err := db.PruneEventsKeeping(ctx, db.clock().Add(-m.EventRetention), m.KeepFrom)
		report("events", err)
		_, err = db.PruneIdempotency(ctx, m.IdempotencyTTL)
		report("idempotency keys", err)
	})
}
