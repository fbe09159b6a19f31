package engine

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// appendEvent gives the event the org's next offset and stores it inside the unit, so the log's
// order is the commit order and a rolled-back unit leaves no event and no gap.
func (tx *Tx) appendEvent(orgID, convID, typ string, data any) error {
	raw, err := json.Marshal(data)
	if err != nil {
		return err
	}
	return tx.appendEventJSON(orgID, convID, typ, raw)
}

// appendEventJSON is appendEvent for data that is already JSON, which the hot path splices from
// pieces it encoded once (the message, the conversation) instead of encoding them again.
func (tx *Tx) appendEventJSON(orgID, convID, typ string, data []byte) error {
	log, err := tx.bolt.Bucket(bucketEvents).CreateBucketIfNotExists([]byte(orgID))
	if err != nil {
		return err
	}
	log.FillPercent = appendFill
	offset, err := log.NextSequence()
	if err != nil {
		return err
	}
	ev := Event{ID: newID(PrefixEvent), Offset: offset, Type: typ, CreatedAt: tx.now, Data: data, OrgID: orgID, ConversationID: convID}
	if err := log.Put(u64(offset), encodeStoredEvent(ev)); err != nil {
		return err
	}
	tx.events = append(tx.events, ev)
	return nil
}

// encodeStoredEvent writes the storedEvent JSON by hand: every field but data is an ID, a number,
// a type name or a time (nothing to escape), and data is valid JSON that encoding/json would
// otherwise validate and compact a second time.
func encodeStoredEvent(ev Event) []byte {
	b := make([]byte, 0, 200+len(ev.Data))
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
	b = append(b, `","data":`...)
	b = append(b, ev.Data...)
	return append(b, '}')
}

func decodeEvent(v []byte) (Event, error) {
	var se storedEvent
	if err := json.Unmarshal(v, &se); err != nil {
		return Event{}, err
	}
	ev := se.Event
	ev.OrgID, ev.ConversationID = se.OrgID, se.ConversationID
	return ev, nil
}

// ListEvents returns up to limit events of orgID with offset > after, oldest first, and whether
// more follow.
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
		for k, v := c.Seek(u64(after + 1)); k != nil; k, v = c.Next() {
			if len(out) == limit {
				more = true
				return nil
			}
			ev, err := decodeEvent(v)
			if err != nil {
				return err
			}
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
// background sweeper, so each exits with its owner's context.
func sweepEvery(ctx context.Context, interval time.Duration, fn func(context.Context)) {
	if interval <= 0 {
		interval = time.Minute
	}
	fn(ctx)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn(ctx)
		}
	}
}
