package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"
)

// The schema version 1 fixture was written by the first release: org default, one conversation
// opened in agent_requested and taken over by a keyed reply (key v1-reply) whose text has <, >
// and &, a keyed refusal (v1-bad, a 400) and a keyed PATCH to resolved (v1-patch).
const (
	v1Fixture = "../testdata/schema-v1/awardee.db"
	v1Org     = "org_01M8S3HEMC05MQJ7NFQBCXNVM0"
	v1Conv    = "conv_01M8S3HGK9K92KHECM6MGRRR94"
	v1Reply   = `{"id":"msg_01M8S3HGNX5HZCVY7Y10WWDRTD","conversation_id":"conv_01M8S3HGK9K92KHECM6MGRRR94","seq":2,"role":"assistant","text":"Hi \u003cAnn\u003e \u0026 co","attachments":[],"metadata":{"source":"api","api_key_id":"key_01M8S3HEMC05MQJ7NFQD4A18FN"},"created_at":"2026-12-01T15:28:30.397Z"}`
)

func copyFixture(t *testing.T, src string) string {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, DatabaseFile), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// An older file is migrated at Open, after the caller is told, and then reads as if written by
// this build: threads, log, and keyed replays byte for byte; a second Open migrates nothing.
func TestOpenMigratesSchemaVersion1(t *testing.T) {
	dir := copyFixture(t, v1Fixture)
	var told []uint64
	db, err := Open(dir, Options{OnMigrate: func(from, to uint64) { told = append(told, from, to) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(told) != 2 || told[0] != 1 || told[1] != schemaVersion {
		t.Fatalf("OnMigrate was told %v, want [1 %d]", told, schemaVersion)
	}
	msgs := allMessages(t, db, v1Org, v1Conv)
	if len(msgs) != 2 || msgs[0].Text != AgentJoinedText || msgs[1].Text != "Hi <Ann> & co" {
		t.Fatalf("migrated thread = %+v", msgs)
	}
	if evs := eventsAfter(t, db, v1Org, 0); len(evs) != 4 || evs[2].Type != EventMessageCreated || !strings.Contains(string(evs[2].Data), "Hi") {
		t.Fatalf("migrated log = %d events", len(evs))
	}
	forever := 100 * 365 * 24 * time.Hour // the fixture's records are older than any TTL
	rec, err := db.LookupIdempotency(v1Org, "v1-reply", forever)
	if err != nil || rec == nil || rec.Status != 201 || string(rec.Body) != v1Reply {
		t.Fatalf("the v1 keyed reply replays as %+v (%v)", rec, err)
	}
	rec, err = db.LookupIdempotency(v1Org, "v1-bad", forever)
	if err != nil || rec == nil || rec.Status != 400 || !strings.Contains(string(rec.Body), "validation_error") {
		t.Fatalf("the v1 keyed refusal replays as %+v (%v)", rec, err)
	}
	if problems := db.Check(); len(problems) != 0 {
		t.Fatalf("the migrated file fails its check: %v", problems)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	told = nil
	db2 := openDBAt(t, dir)
	if len(told) != 0 {
		t.Fatal("a migrated file was migrated again")
	}
	if rec, err := db2.LookupIdempotency(v1Org, "v1-patch", forever); err != nil || rec == nil || rec.Status != 200 {
		t.Fatalf("after reopening, v1-patch replays as %+v (%v)", rec, err)
	}
}

// A file of a newer schema is refused, unchanged, with an error an operator can act on.
func TestOpenRefusesANewerSchema(t *testing.T) {
	dir := t.TempDir()
	db := openDBAt(t, dir)
	db.Close()
	b, err := bolt.Open(filepath.Join(dir, DatabaseFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = b.Update(func(tx *bolt.Tx) error {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], schemaVersion+1)
		return tx.Bucket(bucketMeta).Put(schemaKey, v[:])
	})
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, DatabaseFile))
	_, err = Open(dir, Options{})
	if !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("Open of a newer file = %v, want ErrNewerSchema", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, DatabaseFile))
	if string(before) != string(after) {
		t.Fatal("refusing a newer file changed it")
	}
}

// The schema version 2 fixture is today's layout, written by this build's server: org default
// with its admin, one conversation opened in agent_requested with a visitor's message, then a
// keyed takeover reply (key v2-reply) whose text has <, > and &.
const v2Fixture = "../testdata/schema-v2/awardee.db"

// v2Thread reads the fixture's one conversation: its org, id and messages.
func v2Thread(t *testing.T, db *DB) (orgID, convID string, msgs []Message) {
	t.Helper()
	orgs, err := db.Orgs()
	if err != nil || len(orgs) != 1 {
		t.Fatalf("orgs %v (%v)", orgs, err)
	}
	convs, _, err := db.ListConversations(orgs[0].ID, "", nil, 10)
	if err != nil || len(convs) != 1 {
		t.Fatalf("conversations %+v (%v)", convs, err)
	}
	conv := convs[0].ID
	return orgs[0].ID, conv, allMessages(t, db, orgs[0].ID, conv)
}

// layoutNotes is a layout change no build makes, for tests: version 3 adds the bucket
// layout_notes holding, for every conversation, the number of its messages.
func layoutNotes(tx *bolt.Tx) error {
	notes, err := tx.CreateBucket([]byte("layout_notes"))
	if err != nil {
		return err
	}
	return tx.Bucket(bucketConvs).ForEach(func(k, _ []byte) error {
		convID := k[len(PrefixOrg)+ulid.EncodedSize:] // keys are org id · conv id
		n := 0
		c := tx.Bucket(bucketMsgs).Cursor()
		for mk, _ := c.Seek(convID); mk != nil && bytes.HasPrefix(mk, convID); mk, _ = c.Next() {
			n++
		}
		return notes.Put(bytes.Clone(k), u64(uint64(n)))
	})
}

// Today's file migrates to a later layout at Open: the caller is told first, with both
// versions, the step runs in the transaction that opens the file, the file then reads as
// before, and this build (which knows only version 2) refuses the migrated file.
func TestOpenMigratesTodaysLayoutToALaterOne(t *testing.T) {
	dir := copyFixture(t, v2Fixture)
	var order []string
	later := &schemaLayout{version: schemaVersion + 1, steps: map[uint64]func(*bolt.Tx) error{
		schemaVersion: func(tx *bolt.Tx) error { order = append(order, "step"); return layoutNotes(tx) },
	}}
	db, err := Open(dir, Options{layout: later, OnMigrate: func(from, to uint64) {
		order = append(order, fmt.Sprintf("told %d→%d", from, to))
	}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{fmt.Sprintf("told %d→%d", schemaVersion, schemaVersion+1), "step"}; !slices.Equal(order, want) {
		t.Fatalf("Open did %v, want %v", order, want)
	}
	orgID, convID, msgs := v2Thread(t, db)
	if len(msgs) != 3 || msgs[0].Text != "hello <there> & all" || msgs[1].Text != AgentJoinedText || msgs[2].Text != "Hi <Ann> & co" {
		t.Fatalf("the migrated thread: %+v", msgs)
	}
	forever := 100 * 365 * 24 * time.Hour
	if rec, err := db.LookupIdempotency(orgID, "v2-reply", forever); err != nil || rec == nil || rec.Status != 201 || !strings.Contains(string(rec.Body), msgs[2].ID) {
		t.Fatalf("the keyed reply replays as %+v (%v)", rec, err)
	}
	var note []byte
	db.bolt.View(func(tx *bolt.Tx) error {
		note = bytes.Clone(tx.Bucket([]byte("layout_notes")).Get([]byte(orgID + convID)))
		return nil
	})
	if len(note) != 8 || binary.BigEndian.Uint64(note) != 3 {
		t.Fatalf("the step's note for the conversation is %x, want 3 messages", note)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	order = nil
	db, err = Open(dir, Options{layout: later, OnMigrate: func(from, to uint64) { order = append(order, "told") }})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if len(order) != 0 {
		t.Fatalf("a migrated file was migrated again: %v", order)
	}
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("this build opened the migrated file: %v, want ErrNewerSchema", err)
	}
}

// A migration is one transaction: when a later step fails, the file is exactly as it was, and
// this build still serves it.
func TestAFailedMigrationChangesNothing(t *testing.T) {
	dir := copyFixture(t, v2Fixture)
	before, err := os.ReadFile(filepath.Join(dir, DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	failing := &schemaLayout{version: schemaVersion + 2, steps: map[uint64]func(*bolt.Tx) error{
		schemaVersion:     layoutNotes,
		schemaVersion + 1: func(*bolt.Tx) error { return errors.New("the second step fails") },
	}}
	_, err = Open(dir, Options{layout: failing})
	if err == nil || !strings.Contains(err.Error(), "the second step fails") || !strings.Contains(err.Error(), fmt.Sprintf("migrating schema version %d to %d", schemaVersion+1, schemaVersion+2)) {
		t.Fatalf("Open with a failing step: %v", err)
	}
	after, err := os.ReadFile(filepath.Join(dir, DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("a failed migration changed the file")
	}
	db := openDBAt(t, dir)
	if _, _, msgs := v2Thread(t, db); len(msgs) != 3 {
		t.Fatalf("after the failed migration the thread has %d messages", len(msgs))
	}
}
