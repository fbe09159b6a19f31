package engine

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
