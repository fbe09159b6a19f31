package engine

import (
	"bytes"
	"encoding/base64"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestCursorSeal: a sealed cursor opens to its position on its own list only; every cut and
// every single-bit edit is refused, as is a cursor of another list or another database.
func TestCursorSeal(t *testing.T) {
	db := openTestDB(t)
	position := []byte("org_x\x00some position bytes")
	cursor := db.SealCursor("list A", position)
	if got, err := db.OpenCursor("list A", cursor); err != nil || !bytes.Equal(got, position) {
		t.Fatalf("open = %q, %v", got, err)
	}

	for n := range len(cursor) {
		if _, err := db.OpenCursor("list A", cursor[:n]); err == nil {
			t.Fatalf("cut to %d of %d characters: accepted", n, len(cursor))
		} else {
			wantDetails(t, wantCode(t, err, CodeValidation), map[string]any{"field": "cursor"})
		}
	}
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(raw) * 8 {
		edited := bytes.Clone(raw)
		edited[i/8] ^= 1 << (i % 8)
		if _, err := db.OpenCursor("list A", base64.RawURLEncoding.EncodeToString(edited)); err == nil {
			t.Fatalf("bit %d flipped: accepted", i)
		}
	}
	for _, other := range []string{"list B", "list A\x00", "list ", ""} {
		if _, err := db.OpenCursor(other, cursor); err == nil {
			t.Fatalf("the cursor of list A opened on %q", other)
		}
	}
	// The list's length is in the MAC: moving bytes between list and position changes the tag.
	if _, err := db.OpenCursor("list Ao", base64.RawURLEncoding.EncodeToString(raw[1:])); err == nil {
		t.Fatal("a byte moved from the position into the list name was accepted")
	}
	if _, err := db.OpenCursor("list A", "not*base64"); err == nil {
		t.Fatal("a cursor that is not base64url was accepted")
	}
	if _, err := openTestDB(t).OpenCursor("list A", cursor); err == nil {
		t.Fatal("another database accepted the cursor")
	}
}

// TestCursorKeyIsMadeOnceAndKept: the first Open stores the key, later Opens use it (cursors
// outlive a restart), and a damaged key refuses to open rather than quietly replacing it.
func TestCursorKeyIsMadeOnceAndKept(t *testing.T) {
	dir := t.TempDir()
	db := openDBAt(t, dir)
	cursor := db.SealCursor("list", []byte{1, 2, 3})
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openDBAt(t, dir)
	if got, err := db.OpenCursor("list", cursor); err != nil || !bytes.Equal(got, []byte{1, 2, 3}) {
		t.Fatalf("after reopening: %v, %v", got, err)
	}
	if err := db.bolt.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(cursorKeyName, []byte("short"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if db, err := Open(dir, Options{}); err == nil {
		db.Close()
		t.Fatal("a database with a damaged cursor key opened")
	}
}
