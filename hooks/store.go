package hooks

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/oklog/ulid/v2"
)

// The plug-in buckets and their key layouts (also written in engine/db.go's layout comment).
// Org and endpoint ids have a fixed length, so keys need no separators.
//
//	hook_endpoints   org id · endpoint id                 → endpointRecord (JSON)
//	hook_cursors     org id · endpoint id                 → offset (8, BE): the last event handled
//	                 (delivered, skipped by the filter, or parked in hook_owed)
//	hook_deliveries  org id · endpoint id · ^ULID (16)     → Delivery (JSON) with its attempts; the
//	                 delivery id's ULID bitwise complemented, so an endpoint's rows sort newest first
//	hook_owed        org id · endpoint id · offset (8, BE) → state (1: 'p' pending, 'f' failed) ·
//	                 next attempt unix ms (8, BE) · delivery id: deliveries waiting for a retry or
//	                 failed and kept for a manual one, whose events must stay in the log; a worker
//	                 finds what is due here without decoding any delivery
const (
	bucketEndpoints  = "hook_endpoints"
	bucketCursors    = "hook_cursors"
	bucketDeliveries = "hook_deliveries"
	bucketOwed       = "hook_owed"
)

// Buckets are the plug-in buckets the package needs; pass them in engine.Options.Buckets.
var Buckets = []string{bucketEndpoints, bucketCursors, bucketDeliveries, bucketOwed}

// ID prefixes: a prefix and a 26-character ULID, like every id of the contract.
const (
	PrefixEndpoint = "wh_"
	PrefixDelivery = "whd_"
)

// Endpoint statuses.
const (
	StatusActive  = "active"
	StatusFailing = "failing"
)

// Delivery statuses.
const (
	DeliveryPending   = "pending"
	DeliverySucceeded = "succeeded"
	DeliveryFailed    = "failed"
)

// Endpoint is a registered receiver as the API shows it. Secret is filled only in the answer to
// its creation.
type Endpoint struct {
	ID         string      `json:"id"`
	URL        string      `json:"url"`
	EventTypes []string    `json:"events"`
	Status     string      `json:"status"`
	CreatedAt  engine.Time `json:"created_at"`
	Secret     string      `json:"secret,omitempty"`
}

// endpointRecord is the stored form; the secret is kept in the clear because every delivery is
// signed with it.
type endpointRecord struct {
	Endpoint
	OrgID      string `json:"org_id"`
	SigningKey string `json:"signing_key"`
}

// Attempt is one try of a delivery.
type Attempt struct {
	At           engine.Time `json:"at"`
	Status       int         `json:"status"` // the HTTP status, 0 when none came back
	LatencyMS    int64       `json:"latency_ms"`
	Error        string      `json:"error"`
	ResponseBody string      `json:"response_body"` // the first 1 KiB
}

// Delivery is one event owed to one endpoint, with every attempt newest first.
type Delivery struct {
	ID            string       `json:"id"`
	EndpointID    string       `json:"endpoint_id"`
	EventID       string       `json:"event_id"`
	EventType     string       `json:"event_type"`
	Offset        uint64       `json:"offset"`
	Status        string       `json:"status"`
	Attempts      []Attempt    `json:"attempts"`
	NextAttemptAt *engine.Time `json:"next_attempt_at"`
	CreatedAt     engine.Time  `json:"created_at"`
}

func endpointKey(orgID, endpointID string) []byte { return []byte(orgID + endpointID) }

// deliveryKey is the row key of a delivery id, which must be well formed (see engine.ValidID).
func deliveryKey(orgID, endpointID, deliveryID string) []byte {
	id := ulid.MustParseStrict(deliveryID[len(PrefixDelivery):])
	key := append([]byte(orgID+endpointID), id[:]...)
	for i := len(key) - len(id); i < len(key); i++ {
		key[i] = ^key[i]
	}
	return key
}

// deliveryKeyTime is the creation time carried by a delivery row's key.
func deliveryKeyTime(key []byte) time.Time {
	var id ulid.ULID
	copy(id[:], key[len(key)-len(id):])
	for i := range id {
		id[i] = ^id[i]
	}
	return ulid.Time(id.Time())
}

func owedKey(orgID, endpointID string, offset uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(orgID+endpointID), offset)
}

// owedEntry is one row of hook_owed.
type owedEntry struct {
	Offset     uint64
	DeliveryID string
	Pending    bool
	Due        time.Time // of the next attempt; zero when failed
}

func (e owedEntry) encode() []byte {
	state := byte('f')
	var due uint64
	if e.Pending {
		state, due = 'p', uint64(e.Due.UnixMilli())
	}
	return append(binary.BigEndian.AppendUint64([]byte{state}, due), e.DeliveryID...)
}

func decodeOwed(key, value []byte) (owedEntry, error) {
	if len(key) < 8 || len(value) < 9 {
		return owedEntry{}, errors.New("owed row is truncated")
	}
	e := owedEntry{Offset: readU64(key[len(key)-8:]), DeliveryID: string(value[9:]), Pending: value[0] == 'p'}
	if e.Pending {
		e.Due = time.UnixMilli(int64(binary.BigEndian.Uint64(value[1:9])))
	}
	return e, nil
}

func putOwed(b engine.Bucket, orgID, endpointID string, e owedEntry) error {
	return b.Put(owedKey(orgID, endpointID, e.Offset), e.encode())
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func readU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

var errDeliveryNotFound = engine.Errorf(engine.CodeNotFound, "delivery not found")

var errEndpointGone = engine.Errorf(engine.CodeNotFound, "webhook endpoint not found")

// buckets is one unit's handles on the package's buckets.
type buckets struct {
	endpoints, cursors, deliveries, owed engine.Bucket
}

func openBuckets(tx *engine.Tx) (buckets, error) {
	var b buckets
	var errs []error
	for name, dst := range map[string]*engine.Bucket{bucketEndpoints: &b.endpoints, bucketCursors: &b.cursors, bucketDeliveries: &b.deliveries, bucketOwed: &b.owed} {
		h, err := tx.Bucket(name)
		errs = append(errs, err)
		*dst = h
	}
	return b, errors.Join(errs...)
}

func getEndpoint(b engine.Bucket, orgID, endpointID string) (*endpointRecord, error) {
	raw := b.Get(endpointKey(orgID, endpointID))
	if raw == nil {
		return nil, errEndpointGone
	}
	return decodeEndpoint(raw)
}

func decodeEndpoint(raw []byte) (*endpointRecord, error) {
	var rec endpointRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

func decodeDelivery(raw []byte) (*Delivery, error) {
	var d Delivery
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

func putJSON(b engine.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

func getDelivery(b engine.Bucket, orgID, endpointID, deliveryID string) (*Delivery, error) {
	raw := b.Get(deliveryKey(orgID, endpointID, deliveryID))
	if raw == nil {
		return nil, errDeliveryNotFound
	}
	return decodeDelivery(raw)
}

// scanPrefix calls fn for each key under prefix, in order, until fn returns false or an error.
func scanPrefix(b engine.Bucket, prefix []byte, fn func(key, value []byte) (bool, error)) error {
	return scanPrefixFrom(b, prefix, prefix, fn)
}

// scanPrefixFrom is scanPrefix starting at start (inclusive), which sorts at or after prefix.
func scanPrefixFrom(b engine.Bucket, prefix, start []byte, fn func(key, value []byte) (bool, error)) error {
	return b.Scan(start, func(k, v []byte) (bool, error) {
		if len(k) < len(prefix) || string(k[:len(prefix)]) != string(prefix) {
			return false, nil
		}
		return fn(k, v)
	})
}

// orgEndpoints returns the org's endpoint records in id (creation) order.
func orgEndpoints(b engine.Bucket, orgID string) ([]endpointRecord, error) {
	var out []endpointRecord
	err := scanPrefix(b, []byte(orgID), func(_, v []byte) (bool, error) {
		rec, err := decodeEndpoint(v)
		if err != nil {
			return false, err
		}
		out = append(out, *rec)
		return true, nil
	})
	return out, err
}

// keepFrom is the lowest offset of orgID's log that some endpoint still needs: the event after
// its cursor, or the event of its oldest owed delivery. MaxUint64 when nothing is needed.
//
// It reads each bucket in its own view (nested read transactions can deadlock against a writer
// remapping the file), cursors before owed rows: a worker parks a failed delivery in the same
// unit that moves its cursor past it, so a cursor read first is never newer than the owed rows
// read after it, and no parked offset can fall between the two reads.
func keepFrom(db *engine.DB, orgID string) (uint64, error) {
	var eps []endpointRecord
	err := db.ViewBucket(bucketEndpoints, func(b engine.Bucket) error {
		var err error
		eps, err = orgEndpoints(b, orgID)
		return err
	})
	if err != nil || len(eps) == 0 {
		return math.MaxUint64, err
	}
	keep := uint64(math.MaxUint64)
	err = db.ViewBucket(bucketCursors, func(b engine.Bucket) error {
		for _, ep := range eps {
			keep = min(keep, readU64(b.Get(endpointKey(orgID, ep.ID)))+1)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	err = db.ViewBucket(bucketOwed, func(b engine.Bucket) error {
		return scanPrefix(b, []byte(orgID), func(k, _ []byte) (bool, error) {
			keep = min(keep, readU64(k[len(k)-8:]))
			return true, nil
		})
	})
	return keep, err
}
