package hooks

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/oklog/ulid/v2"
)

// EventTypes are the types an endpoint may ask for; "*" (the default) is every type, including
// types added later.
var EventTypes = []string{engine.EventConversationUpdated, engine.EventMessageCreated}

const anyType = "*"

// maxEndpoints bounds an org's endpoints: each has its worker and its connection pool.
const maxEndpoints = 50

// maxURLLength bounds a URL as browsers and most servers do.
const maxURLLength = 2048

// NewEndpoint is the body of POST /webhooks.
type NewEndpoint struct {
	URL        *string  `json:"url"`
	EventTypes []string `json:"events"`
}

// Page is the contract's list shape.
type Page[T any] struct {
	Data       []T     `json:"data"`
	NextCursor *string `json:"next_cursor"`
}

func newID(prefix string) string { return prefix + ulid.Make().String() }

func stamp(t time.Time) engine.Time { return engine.Time{Time: t.UTC().Truncate(time.Millisecond)} }

func allTypes(types []string) bool { return len(types) == 0 || slices.Contains(types, anyType) }

// newSecret is "whsec_" and the base64 of 32 random bytes, the Standard Webhooks form.
func newSecret() string {
	var b [32]byte
	rand.Read(b[:]) // never fails on supported platforms
	return "whsec_" + base64.StdEncoding.EncodeToString(b[:])
}

func signingKey(secret string) []byte {
	key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	return key
}

func validation(field, format string, args ...any) *engine.Error {
	return engine.Errorf(engine.CodeValidation, format, args...).WithDetails(map[string]any{"field": field})
}

// Create registers an endpoint for orgID and starts its worker. The endpoint is owed every event
// committed after the org's latest offset as read just before its creation: it may also get an
// event committed in that instant, never miss one committed after it exists. The answer is the
// only one that shows the secret. For a keyed request the answer is stored as its outcome by the
// same write as the endpoint, and returned encoded: the bytes a replay returns.
func (s *Service) Create(ctx context.Context, orgID string, in NewEndpoint, idem *engine.Idempotency) (Endpoint, []byte, error) {
	if in.URL == nil || *in.URL == "" {
		return Endpoint{}, nil, validation("url", "url is required")
	}
	if len(*in.URL) > maxURLLength {
		return Endpoint{}, nil, validation("url", "url is longer than %d bytes", maxURLLength)
	}
	types := []string{anyType}
	if in.EventTypes != nil {
		if len(in.EventTypes) == 0 {
			return Endpoint{}, nil, validation("events", "events must name at least one type (or be left out for every type)")
		}
		types = nil
		for _, t := range in.EventTypes {
			if t != anyType && !slices.Contains(EventTypes, t) {
				return Endpoint{}, nil, validation("events", "%q is not an event type (%s, or * for every type)", t, strings.Join(EventTypes, ", "))
			}
			if !slices.Contains(types, t) {
				types = append(types, t)
			}
		}
		if allTypes(types) {
			types = []string{anyType}
		}
		slices.Sort(types)
	}
	if err := s.opts.CheckURL(ctx, *in.URL); err != nil {
		var e *engine.Error
		if !errors.As(err, &e) {
			e = engine.Errorf(engine.CodeInvalidPayload, "the url is refused: %s", err.Error()).
				WithDetails(map[string]any{"field": "url", "reason": "unsafe_host"})
		}
		return Endpoint{}, nil, e
	}
	_, latest, err := s.db.LogBounds(orgID)
	if err != nil {
		return Endpoint{}, nil, err
	}
	rec := endpointRecord{OrgID: orgID, Endpoint: Endpoint{ID: newID(PrefixEndpoint), URL: *in.URL, EventTypes: types,
		Status: StatusActive, CreatedAt: stamp(s.opts.Now()), Secret: newSecret()}}
	var body []byte
	err = s.db.Update(ctx, func(tx *engine.Tx) error {
		bs, err := openBuckets(tx)
		if err != nil {
			return err
		}
		eps, err := orgEndpoints(bs.endpoints, orgID)
		if err != nil {
			return err
		}
		if len(eps) >= maxEndpoints {
			return validation("url", "an org has at most %d webhook endpoints; delete one first", maxEndpoints)
		}
		if err := putJSON(bs.endpoints, endpointKey(orgID, rec.ID), rec); err != nil {
			return err
		}
		if err := bs.cursors.Put(endpointKey(orgID, rec.ID), u64(latest)); err != nil {
			return err
		}
		body, err = tx.Reply(orgID, idem, rec.Endpoint)
		return err
	})
	if err != nil {
		return Endpoint{}, nil, err
	}
	s.mu.Lock()
	s.startLocked(rec)
	s.mu.Unlock()
	return rec.Endpoint, body, nil
}

// List returns the org's endpoints, oldest first, without their secrets.
func (s *Service) List(orgID string) (Page[Endpoint], error) {
	page := Page[Endpoint]{Data: []Endpoint{}}
	err := s.db.ViewBucket(bucketEndpoints, func(b engine.Bucket) error {
		eps, err := orgEndpoints(b, orgID)
		for _, ep := range eps {
			page.Data = append(page.Data, ep.public())
		}
		return err
	})
	return page, err
}

func (r endpointRecord) public() Endpoint {
	ep := r.Endpoint
	ep.Secret = ""
	return ep
}

// Deleted is the answer to DELETE /webhooks/{id}.
type Deleted struct {
	ID      string `json:"id"`
	Deleted bool   `json:"deleted"`
}

// Delete removes an endpoint with its cursor and deliveries, and stops its worker: once it
// returns, nothing more is sent to it.
func (s *Service) Delete(ctx context.Context, orgID, endpointID string) (Deleted, error) {
	if !engine.ValidID(PrefixEndpoint, endpointID) {
		return Deleted{}, errEndpointGone
	}
	err := s.db.Update(ctx, func(tx *engine.Tx) error {
		bs, err := openBuckets(tx)
		if err != nil {
			return err
		}
		if _, err := getEndpoint(bs.endpoints, orgID, endpointID); err != nil {
			return err
		}
		prefix := endpointKey(orgID, endpointID)
		for _, b := range []engine.Bucket{bs.deliveries, bs.owed} {
			var keys [][]byte
			if err := scanPrefix(b, prefix, func(k, _ []byte) (bool, error) {
				keys = append(keys, append([]byte(nil), k...))
				return true, nil
			}); err != nil {
				return err
			}
			for _, k := range keys {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
		}
		if err := bs.cursors.Delete(prefix); err != nil {
			return err
		}
		return bs.endpoints.Delete(prefix)
	})
	if err != nil {
		return Deleted{}, err
	}
	s.stopWorker(endpointID)
	return Deleted{ID: endpointID, Deleted: true}, nil
}

// Deliveries lists an endpoint's deliveries newest first, each with its attempts newest first;
// after is the last delivery id of the previous page.
func (s *Service) Deliveries(orgID, endpointID, after string, limit int) (Page[Delivery], error) {
	page := Page[Delivery]{Data: []Delivery{}}
	if !engine.ValidID(PrefixEndpoint, endpointID) {
		return page, errEndpointGone
	}
	if after != "" && !engine.ValidID(PrefixDelivery, after) {
		return page, validation("cursor", "cursor is not one this API gave out")
	}
	if err := s.db.ViewBucket(bucketEndpoints, func(b engine.Bucket) error {
		_, err := getEndpoint(b, orgID, endpointID)
		return err
	}); err != nil {
		return page, err
	}
	prefix := endpointKey(orgID, endpointID)
	start := prefix
	if after != "" {
		start = deliveryKey(orgID, endpointID, after)
	}
	more := false
	err := s.db.ViewBucket(bucketDeliveries, func(b engine.Bucket) error {
		return scanPrefixFrom(b, prefix, start, func(k, v []byte) (bool, error) {
			if after != "" && string(k) == string(start) {
				return true, nil
			}
			if len(page.Data) == limit {
				more = true
				return false, nil
			}
			d, err := decodeDelivery(v)
			if err != nil {
				return false, err
			}
			page.Data = append(page.Data, *d)
			return true, nil
		})
	})
	if more {
		next := page.Data[len(page.Data)-1].ID
		page.NextCursor = &next
	}
	return page, err
}

// Retry sends a failed delivery again at once and records the attempt; success settles it and
// makes the endpoint active again. Only a failed delivery can be retried: a pending one is
// already on its schedule.
func (s *Service) Retry(ctx context.Context, orgID, endpointID, deliveryID string) (Delivery, error) {
	if !engine.ValidID(PrefixEndpoint, endpointID) {
		return Delivery{}, errEndpointGone
	}
	if !engine.ValidID(PrefixDelivery, deliveryID) {
		return Delivery{}, errDeliveryNotFound
	}
	var ep *endpointRecord
	if err := s.db.ViewBucket(bucketEndpoints, func(b engine.Bucket) error {
		var err error
		ep, err = getEndpoint(b, orgID, endpointID)
		return err
	}); err != nil {
		return Delivery{}, err
	}
	var d *Delivery
	if err := s.db.ViewBucket(bucketDeliveries, func(b engine.Bucket) error {
		var err error
		d, err = getDelivery(b, orgID, endpointID, deliveryID)
		return err
	}); err != nil {
		return Delivery{}, err
	}
	if d.Status != DeliveryFailed {
		return Delivery{}, engine.Errorf(engine.CodeInvalidState, "only a failed delivery can be retried; this one is %s", d.Status).
			WithDetails(map[string]any{"status": d.Status})
	}
	ev, found, err := s.event(orgID, d.Offset)
	if err != nil {
		return Delivery{}, err
	}
	if !found {
		return Delivery{}, engine.Errorf(engine.CodeInvalidState, "the delivery's event is no longer in the log")
	}
	client := s.newClient()
	defer client.CloseIdleConnections()
	att := send(ctx, s, client, ep.URL, signingKey(ep.Secret), ev)
	var out Delivery
	err = s.db.Update(ctx, func(tx *engine.Tx) error {
		bs, err := openBuckets(tx)
		if err != nil {
			return err
		}
		cur, err := getEndpoint(bs.endpoints, orgID, endpointID)
		if err != nil {
			return err
		}
		rec, err := getDelivery(bs.deliveries, orgID, endpointID, deliveryID)
		if err != nil {
			return err
		}
		rec.Attempts = append([]Attempt{att}, rec.Attempts...)
		if rec.Status == DeliveryFailed && success(att) {
			rec.Status = DeliverySucceeded
			if err := bs.owed.Delete(owedKey(orgID, endpointID, rec.Offset)); err != nil {
				return err
			}
			if err := setStatus(bs, cur, StatusActive); err != nil {
				return err
			}
		}
		out = *rec
		return putJSON(bs.deliveries, deliveryKey(orgID, endpointID, deliveryID), rec)
	})
	if err == nil {
		s.m.delivered(out.Status)
	}
	return out, err
}
