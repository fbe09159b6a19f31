package engine

// maxCachedConversations bounds the commit loop's conversation cache. A record is at most a few
// hundred bytes of ids and times plus a visitor's name and email (bounded by ValidateVisitor), so
// this caps the cache at a few megabytes while holding every conversation a busy org posts to.
const maxCachedConversations = 8192

// convCache keeps decoded conversation records for the commit loop, so that a unit posting to a
// conversation a previous unit wrote does not decode the JSON the loop itself encoded. Only the
// loop goroutine touches it (units run on it), so it takes no lock.
//
// It holds nothing that is not on disk: committed is the records as the last successful commit
// left them; batch is what the running transaction read or wrote, which becomes committed only
// once that transaction's commit returned. A unit's failure re-runs its batch from the start, and
// a failed commit rolls everything back, so both drop batch; a failed commit drops committed too,
// since after an I/O error nothing is sure.
type convCache struct {
	committed map[string]*conversationRecord
	batch     map[string]*conversationRecord
	limit     int
}

func newConvCache(limit int) *convCache {
	return &convCache{committed: make(map[string]*conversationRecord), batch: make(map[string]*conversationRecord), limit: limit}
}

// get returns a copy of the cached record under key (org id · conversation id), which the caller
// may change freely: records hold pointers only to strings that are replaced, never written.
func (c *convCache) get(key string) (conversationRecord, bool) {
	if r, ok := c.batch[key]; ok {
		return *r, true
	}
	if r, ok := c.committed[key]; ok {
		return *r, true
	}
	return conversationRecord{}, false
}

// put records rec as the running transaction's version of key.
func (c *convCache) put(key string, rec *conversationRecord) {
	r := *rec
	c.batch[key] = &r
}

// committedBatch makes the transaction's records the committed ones, after its commit returned.
func (c *convCache) committedBatch() {
	for k, r := range c.batch {
		c.committed[k] = r
	}
	clear(c.batch)
	// Evicting any entries keeps the bound; a map's iteration order is unspecified, and a record
	// evicted is only decoded again the next time it is posted to.
	for k := range c.committed {
		if len(c.committed) <= c.limit {
			break
		}
		delete(c.committed, k)
	}
}

// rolledBack forgets the running transaction's records: its writes are not on disk.
func (c *convCache) rolledBack() { clear(c.batch) }

// failed forgets everything, after a commit failed.
func (c *convCache) failed() {
	clear(c.batch)
	clear(c.committed)
}

// conversation reads a conversation inside a unit, from the loop's cache when a previous unit or
// batch left it there, else from the file (and caches what it decoded). The caller owns the
// returned record.
func (tx *Tx) conversation(orgID, convID string) (*conversationRecord, error) {
	if !ValidID(PrefixConversation, convID) {
		return nil, notFound("conversation")
	}
	cache := tx.db.commits.convs
	key := orgID + convID
	if rec, ok := cache.get(key); ok {
		return &rec, nil
	}
	rec, err := readConversation(tx.bolt, orgID, convID)
	if err != nil {
		return nil, err
	}
	cache.put(key, rec)
	return rec, nil
}

// cacheConversation records what putConversationJSON stored, for the units after this one.
func (tx *Tx) cacheConversation(rec *conversationRecord) {
	tx.db.commits.convs.put(rec.OrgID+rec.ID, rec)
}
