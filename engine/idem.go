package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Idempotency asks a write to store its outcome under an org-scoped key in the same transaction
// as its effects, so a crash can never keep one without the other.
type Idempotency struct {
	Key         string
	Fingerprint [32]byte // BLAKE3 of method, path and body, computed by the caller
	Status      int      // the status the caller answers a success with

}

// IdempotencyRecord is a stored outcome, replayed byte for byte.
type IdempotencyRecord struct {
	Fingerprint []byte
	Status      int
	Body        []byte
	CreatedAt   Time

	message []byte // the key of the message whose encoding is Body, until it is read
}

// The stored form is binary, not JSON: the body is already JSON, and wrapping it again would
// escape or base64 it on the hot path. Layout: created_at unix ms (8, BE) · status (2, BE) ·
// fingerprint (32) · form (1) · then, by form, the body itself (idemBody), or the posted message
// as seq (8, BE) · conversation id (idemMessage): a message never changes once stored, so its
// stored encoding is exactly the 201 body a replay must send, and its text is not kept twice.
const idemHeader = 8 + 2 + 32 + 1

const (
	idemBody    byte = 0
	idemMessage byte = 1
)

// idemRecord is a record as stored; ref is the body (idemBody) or the message's key (idemMessage).
type idemRecord struct {
	fingerprint []byte
	status      int
	createdAt   Time
	form        byte
	ref         []byte
}

func (r idemRecord) encode() []byte {
	out := make([]byte, idemHeader, idemHeader+len(r.ref))
	binary.BigEndian.PutUint64(out[0:8], uint64(r.createdAt.UnixMilli()))
	binary.BigEndian.PutUint16(out[8:10], uint16(r.status))
	copy(out[10:42], r.fingerprint)
	out[42] = r.form
	return append(out, r.ref...)
}

// decodeIdempotency reads a stored record. A record that names its message gets no Body here but
// the message's key, from which LookupIdempotency reads the body in the same transaction.
func decodeIdempotency(raw []byte) (IdempotencyRecord, error) {
	if len(raw) < idemHeader {
		return IdempotencyRecord{}, errors.New("idempotency record is truncated")
	}
	rec := IdempotencyRecord{
		CreatedAt:   Time{time.UnixMilli(int64(binary.BigEndian.Uint64(raw[0:8]))).UTC()},
		Status:      int(binary.BigEndian.Uint16(raw[8:10])),
		Fingerprint: append([]byte(nil), raw[10:42]...),
	}
	rest := raw[idemHeader:]
	switch raw[42] {
	case idemBody:
		rec.Body = append([]byte(nil), rest...)
	case idemMessage:
		if len(rest) <= 8 {
			return IdempotencyRecord{}, errors.New("idempotency record's message reference is truncated")
		}
		// The message's key is conversation id · seq; the record keeps seq first.
		rec.message = join(rest[8:], rest[:8])
	default:
		return IdempotencyRecord{}, fmt.Errorf("idempotency record has an unknown form %d", raw[42])
	}
	return rec, nil
}

// idemCreatedAt reads only the time of a stored record, for sweeps.
func idemCreatedAt(raw []byte) (time.Time, bool) {
	if len(raw) < 8 {
		return time.Time{}, false
	}
	return time.UnixMilli(int64(binary.BigEndian.Uint64(raw[0:8]))), true
}

func idemKey(orgID, key string) []byte { return []byte(orgID + key) }

// Reply is reply for plug-ins whose writes answer keyed requests (webhook registration): the
// outcome commits in the same unit as the change it reports.
func (tx *Tx) Reply(orgID string, idem *Idempotency, result any) ([]byte, error) {
	return tx.reply(orgID, idem, result)
}

// reply encodes result as the JSON the caller answers with and, for a keyed request, stores that
// very encoding under idem's key, so the answer and any replay are the same bytes.
func (tx *Tx) reply(orgID string, idem *Idempotency, result any) ([]byte, error) {
	body, err := marshal(result)
	if err != nil || idem == nil {
		return body, err
	}
	return body, tx.putIdempotency(orgID, idem, idem.Status, body)
}

// putIdempotency stores the record with its body and its entry in the time index (replacing the
// entry of an expired record it overwrites).
func (tx *Tx) putIdempotency(orgID string, idem *Idempotency, status int, body []byte) error {
	return tx.putIdempotencyRecord(orgID, idem, idemRecord{status: status, form: idemBody, ref: body})
}

// putIdempotencyMessage stores a record whose body is the message this unit stored under convID
// and seq, encoded as msgJSON, by reference.
func (tx *Tx) putIdempotencyMessage(orgID string, idem *Idempotency, status int, convID string, seq uint64) error {
	ref := append(u64(seq), convID...)
	return tx.putIdempotencyRecord(orgID, idem, idemRecord{status: status, form: idemMessage, ref: ref})
}

func (tx *Tx) putIdempotencyRecord(orgID string, idem *Idempotency, rec idemRecord) error {
	key := idemKey(orgID, idem.Key)
	records, byTime := tx.bolt.Bucket(bucketIdem), tx.bolt.Bucket(bucketIdemTime)
	if at, ok := idemCreatedAt(records.Get(key)); ok {
		if err := byTime.Delete(join(u64(uint64(at.UnixMilli())), key)); err != nil {
			return err
		}
	}
	rec.fingerprint, rec.createdAt = idem.Fingerprint[:], tx.now
	if err := records.Put(key, rec.encode()); err != nil {
		return err
	}
	return byTime.Put(join(u64(uint64(tx.now.UnixMilli())), key), nil)
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
		if err == nil && r.message != nil {
			if body := btx.Bucket(bucketMsgs).Get(r.message); body != nil {
				r.Body, r.message = append([]byte(nil), body...), nil
			} else {
				err = errors.New("idempotency record names a missing message")
			}
		}
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
	// OnSessionsEnded is told of the sessions a sweep deleted, so that what they opened and
	// nothing asks again (a WebSocket) is closed too.
	OnSessionsEnded func([]EndedSession)
	// OnError reports a failed sweep, or a panicking one (with its stack); the next tick tries
	// again.
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
		ended, err := db.pruneSessions(ctx)
		report("sessions", err)
		if len(ended) > 0 && m.OnSessionsEnded != nil {
			m.OnSessionsEnded(ended)
		}
	}, func(err error) { report("maintenance", err) })
}
