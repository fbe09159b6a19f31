package engine

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"
)

// maxProblems bounds what one check reports: a badly damaged file would otherwise list every row.
const maxProblems = 100

const (
	orgIDLen  = len(PrefixOrg) + ulid.EncodedSize
	convIDLen = len(PrefixConversation) + ulid.EncodedSize
)

// errRollback ends a transaction that must write nothing.
var errRollback = errors.New("rollback")

// Check verifies the whole database: bbolt's own page-level consistency check, then the
// invariants the key layouts promise (see db.go). It holds the write lock while it runs, so no
// batch commits in the middle of it, and writes nothing. An empty result means the database is
// sound. It never panics on a damaged file; bad pages are reported as problems.
func (db *DB) Check() []error {
	var problems []error
	err := db.bolt.Update(func(btx *bolt.Tx) error {
		problems = checkTx(btx)
		return errRollback
	})
	if err != nil && !errors.Is(err, errRollback) {
		problems = append(problems, err)
	}
	return problems
}

// CheckDir verifies the database in dir without writing to it and without creating one: the
// file's own damage checks first (as Open makes them), then Check. It answers an error, not a
// list of problems, when it cannot look at all (no database there, or a server holds it).
func CheckDir(dir string, lockTimeout time.Duration) ([]error, error) {
	path := filepath.Join(dir, DatabaseFile)
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no database at %s", path)
		}
		return nil, err
	}
	b, err := openBolt(path, lockTimeout, false)
	var damage *damageError
	if errors.As(err, &damage) {
		return []error{fmt.Errorf("%s: %s", ErrDamaged, damage.reason)}, nil
	}
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return (&DB{bolt: b, path: path}).Check(), nil
}

// problemList collects problems up to maxProblems and counts the rest.
type problemList struct {
	list    []error
	dropped int
}

func (p *problemList) add(format string, args ...any) {
	if len(p.list) >= maxProblems {
		p.dropped++
		return
	}
	p.list = append(p.list, fmt.Errorf(format, args...))
}

func (p *problemList) full() bool { return len(p.list) >= maxProblems }

func (p *problemList) result() []error {
	if p.dropped > 0 {
		return append(p.list, fmt.Errorf("… and %d more problems", p.dropped))
	}
	return p.list
}

// checkTx runs every check inside btx. The page walk comes first and in this goroutine, with
// panics and faults recovered: bbolt runs its own check in a goroutine of its own, where a bad
// page would crash the process instead of being reported.
func checkTx(btx *bolt.Tx) []error {
	if err := walkPages(btx); err != nil {
		return []error{err}
	}
	var p problemList
	for err := range btx.Check() {
		p.add("bbolt: %v", err)
	}
	if len(p.list) > 0 {
		// The invariants read the same pages; with the file itself unsound they only add noise.
		return p.result()
	}
	err := recovered(func() error {
		checkInvariants(btx, &p)
		return nil
	})
	if err != nil {
		p.add("%v", err)
	}
	return p.result()
}

// pagePanic is a panic of bbolt's reading a page, recovered.
type pagePanic struct{ value any }

func (p pagePanic) Error() string { return fmt.Sprintf("a page does not decode (bbolt: %v)", p.value) }

// recovered runs fn, turning a panic or a memory fault (a page mapped past the end of a
// truncated file) into a pagePanic.
func recovered(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = pagePanic{r}
		}
	}()
	return fn()
}

// walkPages reads every key and value of every bucket, which makes bbolt decode every reachable
// page once.
func walkPages(btx *bolt.Tx) error {
	var walk func(b *bolt.Bucket) int
	walk = func(b *bolt.Bucket) int {
		sum := 0
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil {
				if nested := b.Bucket(k); nested != nil {
					sum += walk(nested)
				}
				continue
			}
			if len(v) > 0 {
				sum += int(v[0]) + int(v[len(v)-1]) // touch the value's pages, overflow ones included
			}
		}
		return sum
	}
	return recovered(func() error {
		return btx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			walk(b)
			return nil
		})
	})
}

// convFacts is what the other checks need to know of a stored conversation.
type convFacts struct {
	orgID, id      string
	status         Status
	lastActivityMs int64
	lastSeq        uint64
	indexed        map[byte]bool
}

// checkInvariants verifies the promises of the key layouts: every index entry points at a row
// that agrees with it, every row has its index entries, counts match, numbering has no gap.
func checkInvariants(btx *bolt.Tx, p *problemList) {
	bucket := func(name []byte) *bolt.Bucket {
		b := btx.Bucket(name)
		if b == nil {
			p.add("bucket %s is missing", name)
		}
		return b
	}
	orgs, convs, activity, msgs := bucket(bucketOrgs), bucket(bucketConvs), bucket(bucketActivity), bucket(bucketMsgs)
	keys, events, idem, idemTime, meta := bucket(bucketKeys), bucket(bucketEvents), bucket(bucketIdem), bucket(bucketIdemTime), bucket(bucketMeta)
	if len(p.list) > 0 {
		return
	}

	orgIDs := map[string]bool{}
	orgs.ForEach(func(k, v []byte) error {
		var o Org
		if err := json.Unmarshal(v, &o); err != nil {
			p.add("orgs: %s does not decode: %v", k, err)
		} else if o.ID != string(k) {
			p.add("orgs: key %s holds org %s", k, o.ID)
		}
		orgIDs[string(k)] = true
		return nil
	})

	byKey := map[string]*convFacts{} // org id · conv id
	byID := map[string]*convFacts{}
	tally := map[Status]uint64{}
	convs.ForEach(func(k, v []byte) error {
		var rec conversationRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			p.add("convs: %s does not decode: %v", k, err)
			return nil
		}
		if rec.OrgID+rec.ID != string(k) {
			p.add("convs: key %s holds conversation %s of org %s", k, rec.ID, rec.OrgID)
		}
		if !orgIDs[rec.OrgID] {
			p.add("convs: conversation %s belongs to a missing org %s", rec.ID, rec.OrgID)
		}
		if !rec.Status.Valid() {
			p.add("convs: conversation %s has an unknown status %q", rec.ID, rec.Status)
		}
		f := &convFacts{orgID: rec.OrgID, id: rec.ID, status: rec.Status, lastActivityMs: rec.LastActivityAt.UnixMilli(), lastSeq: rec.LastSeq, indexed: map[byte]bool{}}
		byKey[string(k)] = f
		byID[rec.ID] = f
		tally[rec.Status]++
		return nil
	})

	activity.ForEach(func(k, _ []byte) error {
		if len(k) != orgIDLen+1+8+convIDLen {
			p.add("activity: entry %x has the wrong length", k)
			return nil
		}
		orgID, sb := string(k[:orgIDLen]), k[orgIDLen]
		at := int64(math.MaxUint64 - binary.BigEndian.Uint64(k[orgIDLen+1:orgIDLen+9]))
		convID := string(invert(k[orgIDLen+9:]))
		f := byKey[orgID+convID]
		switch {
		case f == nil:
			p.add("activity: entry of org %s points at a missing conversation %s", orgID, convID)
		case sb != anyStatus && (int(sb) >= len(Statuses) || Statuses[sb] != f.status):
			p.add("activity: conversation %s is indexed under status byte %d but is %s", convID, sb, f.status)
		case at != f.lastActivityMs:
			p.add("activity: conversation %s is indexed at %d ms but its last activity is %d ms", convID, at, f.lastActivityMs)
		default:
			f.indexed[sb] = true
		}
		return nil
	})
	for _, f := range byKey {
		for _, sb := range []byte{anyStatus, byte(f.status.index())} {
			if !f.indexed[sb] {
				p.add("activity: conversation %s (%s) has no index entry for status byte %d", f.id, f.status, sb)
			}
		}
	}

	for _, s := range Statuses {
		var stored uint64
		if v := meta.Get(countKey(s)); len(v) == 8 {
			stored = binary.BigEndian.Uint64(v)
		} else if v != nil {
			p.add("meta: count of %s is %d bytes, not 8", s, len(v))
		}
		if stored != tally[s] {
			p.add("meta: count of %s is %d but %d conversations are %s", s, stored, tally[s], s)
		}
	}

	checkMessages(msgs, byID, p)

	keys.ForEach(func(k, v []byte) error {
		var pr Principal
		if err := json.Unmarshal(v, &pr); err != nil {
			p.add("keys: %x does not decode: %v", k, err)
			return nil
		}
		if !orgIDs[pr.OrgID] {
			p.add("keys: key %s belongs to a missing org %s", pr.KeyID, pr.OrgID)
		}
		if pr.Kind == KeyVisitor && byKey[pr.OrgID+pr.ConversationID] == nil {
			p.add("keys: visitor token %s points at a missing conversation %s of org %s", pr.KeyID, pr.ConversationID, pr.OrgID)
		}
		return nil
	})

	checkEvents(events, orgIDs, p)
	checkIdempotency(idem, idemTime, p)
	if members, emails, sessions := btx.Bucket(bucketMembers), btx.Bucket(bucketMemberEmails), btx.Bucket(bucketSessions); members != nil && emails != nil && sessions != nil {
		checkMembers(members, emails, sessions, orgIDs, p)
	}
	if assets, refs := btx.Bucket(bucketAssets), btx.Bucket(bucketBlobRefs); assets != nil && refs != nil {
		checkAssets(assets, refs, meta, orgIDs, p)
	}
	if index := btx.Bucket(bucketVisitorUsers); index != nil {
		checkVisitorUsers(index, convs, p)
	}
}

// checkAssets verifies that each org's usage is the sum of its library, and that each blob's
// reference count is the number of orgs whose library holds it.
func checkAssets(assets, refs, meta *bolt.Bucket, orgIDs map[string]bool, p *problemList) {
	usage := map[string]Usage{}
	holders := map[string]uint64{} // blob hash → orgs holding it
	assets.ForEach(func(k, v []byte) error {
		if len(k) != orgIDLen+32 {
			p.add("assets: key %x has the wrong length", k)
			return nil
		}
		orgID, hash := string(k[:orgIDLen]), k[orgIDLen:]
		var a Asset
		if err := json.Unmarshal(v, &a); err != nil {
			p.add("assets: %s of org %s does not decode: %v", hex.EncodeToString(hash), orgID, err)
			return nil
		}
		if a.Hash != hex.EncodeToString(hash) {
			p.add("assets: key %s of org %s holds asset %s", hex.EncodeToString(hash), orgID, a.Hash)
		}
		if !orgIDs[orgID] {
			p.add("assets: asset %s belongs to a missing org %s", a.Hash, orgID)
		}
		u := usage[orgID]
		u.AssetBytes += a.Size
		u.AssetCount++
		usage[orgID] = u
		holders[string(hash)]++
		return nil
	})
	for orgID := range orgIDs {
		var stored Usage
		if raw := meta.Get(usageKey(orgID)); raw != nil {
			if err := json.Unmarshal(raw, &stored); err != nil {
				p.add("meta: usage of org %s does not decode: %v", orgID, err)
				continue
			}
		}
		if stored != usage[orgID] {
			p.add("meta: usage of org %s is %+v but its library holds %+v", orgID, stored, usage[orgID])
		}
	}
	refs.ForEach(func(k, v []byte) error {
		if len(v) != 8 {
			p.add("blob_refs: count of %x is %d bytes, not 8", k, len(v))
		} else if n := binary.BigEndian.Uint64(v); n != holders[string(k)] {
			p.add("blob_refs: blob %x counts %d orgs but %d libraries hold it", k, n, holders[string(k)])
		}
		delete(holders, string(k))
		return nil
	})
	for hash, n := range holders {
		p.add("blob_refs: blob %x is held by %d libraries but has no count", hash, n)
	}
}

// checkMessages verifies that every conversation's messages are numbered 1..last_seq with no gap
// and that no message outlives its conversation.
func checkMessages(msgs *bolt.Bucket, byID map[string]*convFacts, p *problemList) {
	seen := map[string]uint64{} // conv id → highest seq met
	c := msgs.Cursor()
	for k, _ := c.First(); k != nil && !p.full(); k, _ = c.Next() {
		if len(k) != convIDLen+8 {
			p.add("msgs: key %x has the wrong length", k)
			continue
		}
		convID, seq := string(k[:convIDLen]), binary.BigEndian.Uint64(k[convIDLen:])
		f := byID[convID]
		if f == nil {
			p.add("msgs: message %d belongs to a missing conversation %s", seq, convID)
			continue
		}
		if want := seen[convID] + 1; seq != want {
			p.add("msgs: conversation %s has message %d where %d was due", convID, seq, want)
		}
		seen[convID] = seq
	}
	for id, f := range byID {
		if seen[id] != f.lastSeq {
			p.add("msgs: conversation %s has last_seq %d but its messages end at %d", id, f.lastSeq, seen[id])
		}
	}
}

// checkEvents verifies that each org's log holds only its events, keyed and ordered by offset,
// none beyond the last offset given.
func checkEvents(events *bolt.Bucket, orgIDs map[string]bool, p *problemList) {
	c := events.Cursor()
	for name, v := c.First(); name != nil; name, v = c.Next() {
		log := events.Bucket(name)
		if v != nil || log == nil {
			p.add("events: %s is a row, not an org's log", name)
			continue
		}
		if !orgIDs[string(name)] {
			p.add("events: a log belongs to a missing org %s", name)
		}
		var prev uint64
		lc := log.Cursor()
		for k, raw := lc.First(); k != nil && !p.full(); k, raw = lc.Next() {
			if len(k) != 8 {
				p.add("events: org %s has a key %x that is not an offset", name, k)
				continue
			}
			offset := binary.BigEndian.Uint64(k)
			ev, err := decodeEvent(raw)
			switch {
			case err != nil:
				p.add("events: org %s offset %d does not decode: %v", name, offset, err)
			case ev.Offset != offset:
				p.add("events: org %s key %d holds offset %d", name, offset, ev.Offset)
			case ev.OrgID != string(name):
				p.add("events: org %s offset %d belongs to org %s", name, offset, ev.OrgID)
			}
			if offset <= prev {
				p.add("events: org %s offset %d follows %d", name, offset, prev)
			}
			if offset > log.Sequence() {
				p.add("events: org %s holds offset %d beyond the last given, %d", name, offset, log.Sequence())
			}
			prev = offset
		}
	}
}

// checkIdempotency verifies that records and their expiry index match one to one.
func checkIdempotency(idem, idemTime *bolt.Bucket, p *problemList) {
	idem.ForEach(func(k, v []byte) error {
		rec, err := decodeIdempotency(v)
		if err != nil {
			p.add("idem: %q does not decode: %v", k, err)
			return nil
		}
		if idemTime.Get(join(u64(uint64(rec.CreatedAt.UnixMilli())), k)) == nil {
			p.add("idem: record %q has no expiry entry", k)
		}
		return nil
	})
	idemTime.ForEach(func(k, _ []byte) error {
		if len(k) < 8 {
			p.add("idem_time: key %x is too short", k)
			return nil
		}
		at, ok := idemCreatedAt(idem.Get(k[8:]))
		if !ok || !bytes.Equal(u64(uint64(at.UnixMilli())), k[:8]) {
			p.add("idem_time: entry %q points at no record of that time", k[8:])
		}
		return nil
	})
}

// checkMembers verifies that every member belongs to an org and is found by its email, that the
// email index holds nothing else, and that every session belongs to a member.
func checkMembers(members, emails, sessions *bolt.Bucket, orgIDs map[string]bool, p *problemList) {
	members.ForEach(func(k, v []byte) error {
		var rec memberRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			p.add("members: %s does not decode: %v", k, err)
			return nil
		}
		if rec.OrgID+rec.ID != string(k) {
			p.add("members: key %s holds member %s of org %s", k, rec.ID, rec.OrgID)
		}
		if !orgIDs[rec.OrgID] {
			p.add("members: member %s belongs to a missing org %s", rec.ID, rec.OrgID)
		}
		if got := emails.Get(emailKey(rec.Email)); string(got) != string(k) {
			p.add("member_emails: the email of member %s points at %q", rec.ID, got)
		}
		return nil
	})
	emails.ForEach(func(k, v []byte) error {
		if members.Get(v) == nil {
			p.add("member_emails: %s points at a missing member %s", k, v)
		}
		return nil
	})
	sessions.ForEach(func(k, v []byte) error {
		var rec sessionRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			p.add("sessions: %x does not decode: %v", k, err)
			return nil
		}
		if members.Get([]byte(rec.OrgID+rec.MemberID)) == nil {
			p.add("sessions: session %s belongs to a missing member %s", rec.ID, rec.MemberID)
		}
		return nil
	})
}
