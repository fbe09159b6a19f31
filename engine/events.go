package engine

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"runtime/debug"
	"strconv"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	bolt "go.etcd.io/bbolt"
)

// appendEvent gives the event the org's next offset and stores it inside the unit, so the log's
// order is the commit order and a rolled-back unit leaves no event and no gap.
func (tx *Tx) appendEvent(orgID, convID, typ string, data any) error {
	raw, err := marshal(data)
	if err != nil {
		return err
	}
	return tx.appendEventJSON(orgID, convID, typ, raw)
}

// appendEventJSON is appendEvent for data that is already JSON, which the hot path splices from
// pieces it encoded once (the message, the conversation) instead of encoding them again.
func (tx *Tx) appendEventJSON(orgID, convID, typ string, data []byte) error {
	return tx.appendStoredEvent(orgID, convID, typ, data, nil)
}

// messageRef is how a stored message.created event names its message instead of copying it: the
// message (its conversation is the event's) and the conversation as the event saw it.
type messageRef struct {
	seq          uint64
	conversation []byte
}

// appendMessageEvent appends the message.created event of a message just stored under convID and
// seq. Consumers in memory get the full data; the log stores a reference and the conversation
// snapshot, and ListEvents renders the same bytes from the message, which never changes. A long
// text is so stored once, not twice.
func (tx *Tx) appendMessageEvent(orgID, convID string, seq uint64, msgJSON, convJSON []byte) error {
	data := messageCreatedJSON(msgJSON, convJSON)
	return tx.appendStoredEvent(orgID, convID, EventMessageCreated, data, &messageRef{seq: seq, conversation: convJSON})
}

// messageCreatedJSON is a message.created event's data, the one place its bytes are put together
// for consumers in memory and for readers of the log alike.
func messageCreatedJSON(msgJSON, convJSON []byte) []byte {
	return splice(`{"message":`, msgJSON, `,"conversation":`, convJSON, `}`)
}

func (tx *Tx) appendStoredEvent(orgID, convID, typ string, data []byte, ref *messageRef) error {
	log, err := tx.bolt.Bucket(bucketEvents).CreateBucketIfNotExists([]byte(orgID))
	if err != nil {
		return err
	}
	log.FillPercent = appendFill
	offset, err := log.NextSequence()
	if err != nil {
		return err
	}
	id := tx.eventID
	if tx.eventID = ""; id == "" {
		id = newID(PrefixEvent)
	}
	ev := Event{ID: id, Offset: offset, Type: typ, CreatedAt: tx.now, Data: data, OrgID: orgID, ConversationID: convID}
	if err := log.Put(u64(offset), encodeStoredEvent(ev, ref)); err != nil {
		return err
	}
	tx.events = append(tx.events, ev)
	return nil
}

// encodeStoredEvent writes the storedEvent JSON by hand: every field but data is an ID, a number,
// a type name or a time (nothing to escape), and data is valid JSON that an encoder would
// otherwise validate and compact a second time. With ref, the message's reference and the
// conversation take data's place.
func encodeStoredEvent(ev Event, ref *messageRef) []byte {
	n := 200 + len(ev.Data)
	if ref != nil {
		n = 220 + len(ref.conversation)
	}
	b := make([]byte, 0, n)
	b = append(b, `{"id":"`...)
	b = append(b, ev.ID...)
	b = append(b, `","offset":`...)
	b = strconv.AppendUint(b, ev.Offset, 10)
	b = append(b, `,"type":"`...)
	b = append(b, ev.Type...)
	b = append(b, `","created_at":"`...)
	b = ev.CreatedAt.UTC().AppendFormat(b, timeLayout)
	b = append(b, `","org_id":"`...)
	b = append(b, ev.OrgID...)
	b = append(b, `","conversation_id":"`...)
	b = append(b, ev.ConversationID...)
	if ref != nil {
		b = append(b, `","message_seq":`...)
		b = strconv.AppendUint(b, ref.seq, 10)
		b = append(b, `,"conversation":`...)
		b = append(b, ref.conversation...)
		return append(b, '}')
	}
	b = append(b, `","data":`...)
	b = append(b, ev.Data...)
	return append(b, '}')
}

// decodeEvent reads a stored event's own fields. The Data of a message.created event that
// references its message is left nil: readEvent renders it.
func decodeEvent(v []byte) (Event, error) {
	se, err := decodeStoredEvent(v)
	return se.event(), err
}

func decodeStoredEvent(v []byte) (storedEvent, error) {
	var se storedEvent
	err := jsonv2.Unmarshal(v, &se)
	return se, err
}

func (se storedEvent) event() Event {
	return Event{ID: se.ID, Offset: se.Offset, Type: se.Type, CreatedAt: se.CreatedAt, Data: json.RawMessage(se.Data),
		OrgID: se.OrgID, ConversationID: se.ConversationID}
}

// readEvent decodes a stored event with its full data, rendering a message.created event's from
// the message it references, byte for byte what consumers got in memory when it committed.
// It also returns the message's encoding it used (nil for an event that stores its data).
func readEvent(btx *bolt.Tx, v []byte) (Event, []byte, error) {
	se, err := decodeStoredEvent(v)
	if err != nil {
		return Event{}, nil, err
	}
	ev := se.event()
	if se.MessageSeq == 0 {
		return ev, nil, nil
	}
	msgJSON := btx.Bucket(bucketMsgs).Get(join([]byte(se.ConversationID), u64(se.MessageSeq)))
	if msgJSON == nil {
		return Event{}, nil, fmt.Errorf("event %d refers to message %d of %s, which is missing", se.Offset, se.MessageSeq, se.ConversationID)
	}
	ev.Data = messageCreatedJSON(msgJSON, se.Conversation)
	return ev, msgJSON, nil
}

// ListEvents returns up to limit events of orgID with offset > after, oldest first, and whether
// more follow; the page also ends at MaxPageBytes.
func (db *DB) ListEvents(orgID string, after uint64, limit int) ([]Event, bool, error) {
	if limit < 1 {
		return nil, false, errLimit
	}
	out := []Event{}
	more := false
	if after == math.MaxUint64 {
		return out, false, nil
	}
	err := db.view(func(btx *bolt.Tx) error {
		log := btx.Bucket(bucketEvents).Bucket([]byte(orgID))
		if log == nil {
			return nil
		}
		c := log.Cursor()
		size := 0
		for k, v := c.Seek(u64(after + 1)); k != nil; k, v = c.Next() {
			if len(out) == limit {
				more = true
				return nil
			}
			ev, msgJSON, err := readEvent(btx, v)
			if err != nil {
				return err
			}
			// The stored event's own fields are a little more than its envelope on the wire, so
			// this counts at least what the page will carry.
			itemSize := len(v) + len(msgJSON)
			if pageFull(len(out), limit, size, itemSize) {
				more = true
				return nil
			}
			size += itemSize + 1
			out = append(out, ev)
		}
		return nil
	})
	return out, more, err
}

// LogBounds returns the oldest kept and the latest offset of orgID's log (0, n when it holds no
// event, n being the last offset ever given). A consumer resuming after an offset older than
// oldest-1 has missed pruned events.
func (db *DB) LogBounds(orgID string) (oldest, latest uint64, err error) {
	err = db.view(func(btx *bolt.Tx) error {
		log := btx.Bucket(bucketEvents).Bucket([]byte(orgID))
		if log == nil {
			return nil
		}
		latest = log.Sequence()
		if k, _ := log.Cursor().First(); k != nil {
			oldest = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return oldest, latest, err
}

// pruneChunk bounds one pruning transaction so that it holds the commit loop only briefly.
const pruneChunk = 500

// PruneEvents deletes events created before cutoff from every org's log, in small units through
// the commit loop so message posts keep flowing between them. It returns how many it deleted.
func (db *DB) PruneEvents(ctx context.Context, cutoff time.Time) (int, error) {
	return db.PruneEventsKeeping(ctx, cutoff, nil)
}

// PruneEventsKeeping is PruneEvents that also keeps, in each org's log, every event at or after
// the offset keepFrom(org id) returns (the oldest one a consumer still owes); nil keeps none.
func (db *DB) PruneEventsKeeping(ctx context.Context, cutoff time.Time, keepFrom func(orgID string) uint64) (int, error) {
	orgs, err := db.Orgs()
	if err != nil {
		return 0, err
	}
	total := 0
	for _, org := range orgs {
		keep := uint64(math.MaxUint64)
		if keepFrom != nil {
			keep = keepFrom(org.ID)
		}
		for {
			if err := ctx.Err(); err != nil {
				return total, err
			}
			if oldest, _, err := db.LogBounds(org.ID); err != nil || oldest >= keep {
				if err != nil {
					return total, err
				}
				break
			}
			// Look before writing: a sweep with nothing to prune must not cost each org an
			// fsync'd transaction.
			due, err := db.oldestEventBefore(org.ID, cutoff)
			if err != nil || !due {
				if err != nil {
					return total, err
				}
				break
			}
			n := 0
			err = db.update(ctx, org.ID, func(tx *Tx) error {
				n = 0
				log := tx.bolt.Bucket(bucketEvents).Bucket([]byte(org.ID))
				if log == nil {
					return nil
				}
				c := log.Cursor()
				for k, v := c.First(); k != nil && n < pruneChunk; k, v = c.First() {
					ev, err := decodeEvent(v)
					if err != nil {
						return err
					}
					if !ev.CreatedAt.Before(cutoff) || ev.Offset >= keep {
						break
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
			if n < pruneChunk {
				break
			}
		}
	}
	return total, nil
}

// oldestEventBefore reports whether orgID's oldest kept event was created before cutoff.
func (db *DB) oldestEventBefore(orgID string, cutoff time.Time) (bool, error) {
	var due bool
	err := db.view(func(btx *bolt.Tx) error {
		log := btx.Bucket(bucketEvents).Bucket([]byte(orgID))
		if log == nil {
			return nil
		}
		_, v := log.Cursor().First()
		if v == nil {
			return nil
		}
		ev, err := decodeEvent(v)
		due = err == nil && ev.CreatedAt.Before(cutoff)
		return err
	})
	return due, err
}

// sweepEvery runs fn now and then every interval until ctx ends. It is the one shape of every
// background sweeper, so each exits with its owner's context. A panic of fn (a bbolt assertion
// on a damaged page) is recovered and handed to onPanic with its stack, and the next tick runs
// again: a sweeper must neither crash the server nor die unseen.
func sweepEvery(ctx context.Context, interval time.Duration, fn func(context.Context), onPanic func(error)) {
	if interval <= 0 {
		interval = time.Minute
	}
	// A page mapped past the end of a file truncated under a running server faults; as a panic
	// it is recovered like any other.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	tick := func() {
		defer func() {
			if r := recover(); r != nil {
				onPanic(fmt.Errorf("sweeper panicked: %v\n%s", r, debug.Stack()))
			}
		}()
		fn(ctx)
	}
	tick()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			tick()
		}
	}
}
