// Package hooks owns webhook endpoints, their delivery workers and Standard Webhooks signing.
//
// The org's event log is the outbox: nothing is written for webhooks when an event commits.
// Each endpoint keeps a durable cursor into the log (the last offset it handled), advanced in
// small writes of its own as deliveries succeed; only a delivery that failed gets a row of its
// own, which waits there for its retries. Workers wake on the engine's feed and read the log
// from their cursors, so a restart or a kill resumes every owed delivery: at least once, never
// zero times. The package never writes outside its own buckets and never opens a connection
// but through the dialer it is given.
package hooks

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net"
	"sync"
	"time"

	"github.com/awardee/awardee/engine"
)

// Options configure a Service. DB, DialContext and CheckURL are required.
type Options struct {
	DB *engine.DB
	// DialContext opens every connection to a receiver; it is where address rules are enforced
	// at connect time, after DNS.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// CheckURL judges a URL at registration; its error is shown to the client as the reason the
	// URL is refused (a *engine.Error passes through as it is).
	CheckURL func(ctx context.Context, rawURL string) error
	// Schedule is the delay before each retry after a failed attempt; a delivery that fails
	// the first attempt and every retry is failed.
	Schedule []time.Duration
	// Now is the clock of every stamp and due time; nil is time.Now.
	Now func() time.Time
	// AttemptRetention is how long a finished delivery and its attempts are listed before they
	// are pruned; zero is seven days.
	AttemptRetention time.Duration
	// SweepEvery is how often attempts are pruned; zero is a minute.
	SweepEvery time.Duration
	// Workers bounds the attempts in flight at once over all endpoints; zero is 32. Each
	// endpoint has at most one in flight, so a hanging receiver holds one slot, not the pool.
	Workers int
	// Timeout is the longest an attempt may take to count as a success; zero is 15 s.
	Timeout time.Duration
	Log     *slog.Logger
}

// Service delivers one database's events to its endpoints. Its HTTP-facing methods may be called
// before Run and after it returns; deliveries go out only while Run runs.
type Service struct {
	db   *engine.DB
	opts Options
	sem  chan struct{}
	m    *serviceMetrics

	mu      sync.Mutex
	spawn   func(endpointRecord) // starts a worker under Run's context; nil unless Run runs
	workers map[string]*worker
	group   sync.WaitGroup
}

// New checks opts and returns a Service that is not running yet.
func New(opts Options) (*Service, error) {
	if opts.DB == nil || opts.DialContext == nil || opts.CheckURL == nil {
		return nil, errors.New("hooks: DB, DialContext and CheckURL are required")
	}
	if len(opts.Schedule) == 0 {
		return nil, errors.New("hooks: the retry schedule is empty")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.AttemptRetention <= 0 {
		opts.AttemptRetention = 7 * 24 * time.Hour
	}
	if opts.SweepEvery <= 0 {
		opts.SweepEvery = time.Minute
	}
	if opts.Workers <= 0 {
		opts.Workers = 32
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 15 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &Service{db: opts.DB, opts: opts, sem: make(chan struct{}, opts.Workers), workers: map[string]*worker{}}
	s.m = newServiceMetrics(s)
	return s, nil
}

// ScheduleSpan is the longest a delivery can stay pending: every delay of the schedule at its
// largest jitter. The event log must keep events at least this long.
func ScheduleSpan(schedule []time.Duration) time.Duration {
	var total time.Duration
	for _, d := range schedule {
		total += d
	}
	return time.Duration(float64(total) * (1 + maxJitter))
}

// Run starts a worker for every endpoint, resuming each from its cursor, and prunes old
// attempts, until ctx ends. It returns after every worker has stopped.
func (s *Service) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.spawn != nil {
		s.mu.Unlock()
		return errors.New("hooks: Run is already running")
	}
	s.spawn = func(ep endpointRecord) {
		ctx, cancel := context.WithCancel(ctx)
		w := newWorker(s, ep, cancel)
		s.workers[ep.ID] = w
		s.group.Add(1)
		go func() {
			defer s.group.Done()
			w.run(ctx)
			s.mu.Lock()
			if s.workers[ep.ID] == w {
				delete(s.workers, ep.ID)
			}
			s.mu.Unlock()
		}()
	}
	s.mu.Unlock()
	// Listed after spawn is set, so an endpoint created meanwhile is started by Create or here
	// (startLocked starts each once), never by neither.
	eps, err := s.allEndpoints()
	s.mu.Lock()
	for _, ep := range eps {
		s.startLocked(ep)
	}
	s.mu.Unlock()
	if err != nil {
		s.opts.Log.Error("webhooks: cannot list endpoints; their workers start at the next restart", "err", err)
	}

	s.sweep(ctx)
	t := time.NewTicker(s.opts.SweepEvery)
	defer t.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
			s.sweep(ctx)
		}
	}
	s.mu.Lock()
	s.spawn = nil
	for id, w := range s.workers {
		w.stop()
		delete(s.workers, id)
	}
	s.mu.Unlock()
	s.group.Wait()
	return nil
}

// startLocked starts ep's worker if the service is running. s.mu is held.
func (s *Service) startLocked(ep endpointRecord) {
	if s.spawn != nil && s.workers[ep.ID] == nil {
		s.spawn(ep)
	}
}

// stopWorker stops an endpoint's worker and waits until it has, so that nothing more is sent
// once it returns.
func (s *Service) stopWorker(endpointID string) {
	s.mu.Lock()
	w := s.workers[endpointID]
	delete(s.workers, endpointID)
	s.mu.Unlock()
	if w != nil {
		w.stop()
		<-w.done
	}
}

// KeepFrom is the lowest offset of orgID's log that a cursor or an owed delivery still needs;
// the event pruner keeps it and everything after it. MaxUint64 means nothing is needed. On a
// read error it answers 0, keeping everything: a failed look must never lose an event.
func (s *Service) KeepFrom(orgID string) uint64 {
	keep, err := keepFrom(s.db, orgID)
	if err != nil {
		s.opts.Log.Error("webhooks: cannot tell which events are owed; pruning none", "err", err)
		return 0
	}
	return keep
}

func (s *Service) allEndpoints() ([]endpointRecord, error) {
	var out []endpointRecord
	err := s.db.ViewBucket(bucketEndpoints, func(b engine.Bucket) error {
		var err error
		out, err = orgEndpoints(b, "") // every org's: the empty prefix
		return err
	})
	return out, err
}

// pruneChunk bounds one pruning unit so that it holds the commit loop only briefly.
const pruneChunk = 500

// sweep deletes finished deliveries whose last attempt is older than the retention, with the
// owed row a failed one kept. It looks in a read view first (rows sort newest first, and a key
// tells its row's creation time without decoding it), so a sweep with nothing to do writes
// nothing, then deletes in units of at most pruneChunk rows.
func (s *Service) sweep(ctx context.Context) {
	eps, err := s.allEndpoints()
	if err != nil {
		s.opts.Log.Error("webhooks: attempt sweep", "err", err)
		return
	}
	cutoff := s.opts.Now().Add(-s.opts.AttemptRetention)
	for _, ep := range eps {
		var doomed []*Delivery
		err := s.db.ViewBucket(bucketDeliveries, func(b engine.Bucket) error {
			return scanPrefix(b, endpointKey(ep.OrgID, ep.ID), func(k, v []byte) (bool, error) {
				if !deliveryKeyTime(k).Before(cutoff) {
					return true, nil
				}
				d, err := decodeDelivery(v)
				if err != nil {
					return false, err
				}
				if d.Status != DeliveryPending && (len(d.Attempts) == 0 || d.Attempts[0].At.Before(cutoff)) {
					doomed = append(doomed, d)
				}
				return true, nil
			})
		})
		for len(doomed) > 0 && err == nil && ctx.Err() == nil {
			chunk := doomed[:min(len(doomed), pruneChunk)]
			doomed = doomed[len(chunk):]
			err = s.db.Update(ctx, func(tx *engine.Tx) error {
				bs, err := openBuckets(tx)
				if err != nil {
					return err
				}
				for _, d := range chunk {
					if err := bs.deliveries.Delete(deliveryKey(ep.OrgID, ep.ID, d.ID)); err != nil {
						return err
					}
					if d.Status == DeliveryFailed {
						if err := bs.owed.Delete(owedKey(ep.OrgID, ep.ID, d.Offset)); err != nil {
							return err
						}
					}
				}
				return nil
			})
		}
		if err != nil && ctx.Err() == nil {
			s.opts.Log.Error("webhooks: attempt sweep", "err", err)
		}
	}
}

// oldestOwed is the creation time of the oldest event some endpoint is still owed (the first
// after its cursor, or a pending retry's), and false when none is owed.
func (s *Service) oldestOwed() (time.Time, bool, error) {
	eps, err := s.allEndpoints()
	if err != nil {
		return time.Time{}, false, err
	}
	var oldest time.Time
	found := false
	note := func(orgID string, offset uint64) error {
		if offset == 0 || offset == math.MaxUint64 {
			return nil
		}
		evs, _, err := s.db.ListEvents(orgID, offset-1, 1)
		if err != nil || len(evs) == 0 {
			return err
		}
		if !found || evs[0].CreatedAt.Before(oldest) {
			oldest, found = evs[0].CreatedAt.Time, true
		}
		return nil
	}
	for _, ep := range eps {
		cursor, err := s.cursor(ep.OrgID, ep.ID)
		if err != nil {
			return time.Time{}, false, err
		}
		if err := note(ep.OrgID, cursor+1); err != nil {
			return time.Time{}, false, err
		}
		pending, err := s.owed(ep.OrgID, ep.ID, true)
		if err != nil {
			return time.Time{}, false, err
		}
		if len(pending) > 0 {
			if err := note(ep.OrgID, pending[0].Offset); err != nil {
				return time.Time{}, false, err
			}
		}
	}
	return oldest, found, nil
}

func (s *Service) cursor(orgID, endpointID string) (uint64, error) {
	var c uint64
	err := s.db.ViewBucket(bucketCursors, func(b engine.Bucket) error {
		c = readU64(b.Get(endpointKey(orgID, endpointID)))
		return nil
	})
	return c, err
}

// owed returns the endpoint's owed deliveries in offset order; pendingOnly leaves out the failed.
func (s *Service) owed(orgID, endpointID string, pendingOnly bool) ([]owedEntry, error) {
	var out []owedEntry
	err := s.db.ViewBucket(bucketOwed, func(b engine.Bucket) error {
		return scanPrefix(b, endpointKey(orgID, endpointID), func(k, v []byte) (bool, error) {
			e, err := decodeOwed(k, v)
			if err != nil {
				return false, err
			}
			if e.Pending || !pendingOnly {
				out = append(out, e)
			}
			return true, nil
		})
	})
	return out, err
}
