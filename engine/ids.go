package engine

import (
	"crypto/rand"
	"encoding/base32"
	"strings"

	"github.com/oklog/ulid/v2"
)

// ID prefixes of the contract. Every ID is a prefix plus a 26-character ULID, so IDs sort by
// creation time and have one fixed length per kind, which the key layouts rely on.
const (
	PrefixOrg          = "org_"
	PrefixKey          = "key_"
	PrefixConversation = "conv_"
	PrefixMessage      = "msg_"
	PrefixEvent        = "evt_"
)

// newID returns prefix + a ULID; ulid.Make is safe for concurrent use and monotonic within a
// millisecond in one process.
func newID(prefix string) string { return prefix + ulid.Make().String() }

// ValidID reports whether s is prefix followed by a well-formed ULID. Malformed IDs in a path are
// answered like missing ones, so callers check this before touching storage.
func ValidID(prefix, s string) bool {
	if len(s) != len(prefix)+ulid.EncodedSize || !strings.HasPrefix(s, prefix) {
		return false
	}
	_, err := ulid.ParseStrict(s[len(prefix):])
	return err == nil
}

var secretEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newSecret returns prefix + 160 random bits; only its hash is ever stored.
func newSecret(prefix string) string {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return prefix + secretEncoding.EncodeToString(b[:])
}
