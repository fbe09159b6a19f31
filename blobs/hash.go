package blobs

import (
	"encoding/hex"
	"errors"
)

// Hash is the BLAKE3-256 digest of a blob's bytes, its only name.
type Hash [32]byte

// String is the lower-case hex form used in file names and URLs.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash accepts exactly 64 lower-case hex digits, the form String produces, so a hash has
// one spelling and cannot name a path.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 2*len(h) {
		return h, errors.New("blobs: a hash is 64 hex digits")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return h, errors.New("blobs: a hash is 64 lower-case hex digits")
		}
	}
	_, err := hex.Decode(h[:], []byte(s))
	return h, err
}
