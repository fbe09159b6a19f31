package engine

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"

	"github.com/zeebo/blake3"
	bolt "go.etcd.io/bbolt"
)

// Cursors: a list page's position, sealed so that a client can hand it back but cannot cut,
// edit or move it to another list. The seal is a BLAKE3 keyed hash (a MAC) under a key that is
// made once per database and kept in it, so cursors outlive restarts and backups but no other
// database accepts them. The position itself is not secret (it names an item the page showed);
// it is only opaque by contract.

var cursorKeyName = []byte("cursor_key")

const (
	cursorKeySize = 32 // BLAKE3's key size
	cursorTagSize = 16 // 128 bits: forging one takes 2^128 guesses, each a request
)

// ensureCursorKey returns the database's cursor key, making and storing one in meta on the first
// Open of a database.
func ensureCursorKey(meta *bolt.Bucket) ([]byte, error) {
	if v := meta.Get(cursorKeyName); v != nil {
		if len(v) != cursorKeySize {
			return nil, errors.New("the database's cursor key is damaged")
		}
		return append([]byte(nil), v...), nil
	}
	key := make([]byte, cursorKeySize)
	rand.Read(key)
	return key, meta.Put(cursorKeyName, key)
}

func badCursor() error {
	return Errorf(CodeValidation, "cursor is not one this list gave out (cut, changed, or from another list); start again without it").
		WithDetails(map[string]any{"field": "cursor"})
}

// SealCursor returns position as an opaque cursor for list, which names the list the position is
// in (its org, route and filters): base64url of the position and a MAC over list and position.
func (db *DB) SealCursor(list string, position []byte) string {
	sealed := append(append(make([]byte, 0, len(position)+cursorTagSize), position...), db.cursorTag(list, position)...)
	return base64.RawURLEncoding.EncodeToString(sealed)
}

// OpenCursor returns the position SealCursor sealed in cursor for the same list. A cursor that
// was cut, edited, sealed for another list or by another database is a validation error.
func (db *DB) OpenCursor(list, cursor string) ([]byte, error) {
	sealed, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil || len(sealed) < cursorTagSize {
		return nil, badCursor()
	}
	position, tag := sealed[:len(sealed)-cursorTagSize], sealed[len(sealed)-cursorTagSize:]
	if subtle.ConstantTimeCompare(tag, db.cursorTag(list, position)) != 1 {
		return nil, badCursor()
	}
	return position, nil
}

// cursorTag is the MAC of list and position. The list's length comes first, so no split of the
// same bytes into another list and position gives the same input.
func (db *DB) cursorTag(list string, position []byte) []byte {
	h, err := blake3.NewKeyed(db.cursorKey)
	if err != nil {
		panic(err) // only a key of the wrong size, which ensureCursorKey never returns
	}
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(list)))
	h.Write(n[:])
	h.WriteString(list)
	h.Write(position)
	return h.Sum(nil)[:cursorTagSize]
}
