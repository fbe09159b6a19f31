package engine

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"

	bolt "go.etcd.io/bbolt"
)

// Asset is one image of an org's library: stored once per org, addressed by the BLAKE3 hash of
// its bytes, however many messages use it.
type Asset struct {
	Hash      string `json:"hash"`
	MimeType  string `json:"mime_type"`
	Size      int64  `json:"size"`
	Width     int    `json:"width"`
	Height    int    `json:"height"`
	FileURL   string `json:"file_url"`
	FirstSeen Time   `json:"first_seen"`
}

// Usage is what an org is billed for: each distinct asset once.
type Usage struct {
	AssetBytes int64 `json:"asset_bytes"`
	AssetCount int64 `json:"asset_count"`
}

func assetKey(orgID string, hash []byte) []byte { return join([]byte(orgID), hash) }

func usageKey(orgID string) []byte { return []byte("usage/" + orgID) }

// putAssets records the attachments of a message in its org's library, inside the message's
// unit: an asset seen for the first time gets its record, counts once in the org's usage and
// counts one more org referencing its blob; one already in the library changes nothing.
func (tx *Tx) putAssets(orgID string, attachments []Attachment) error {
	if len(attachments) == 0 {
		return nil
	}
	assets, refs, meta := tx.bolt.Bucket(bucketAssets), tx.bolt.Bucket(bucketBlobRefs), tx.bolt.Bucket(bucketMeta)
	usage := readUsage(meta, orgID)
	added := false
	for _, a := range attachments {
		hash, err := hex.DecodeString(a.Hash)
		if err != nil || len(hash) != 32 {
			return Errorf(CodeInternal, "Internal error.").WithCause(errBadHash(a.Hash))
		}
		key := assetKey(orgID, hash)
		if assets.Get(key) != nil {
			continue
		}
		rec := Asset{Hash: a.Hash, MimeType: a.MimeType, Size: a.Size, Width: a.Width, Height: a.Height, FileURL: a.FileURL, FirstSeen: tx.now}
		if err := putJSON(assets, key, rec); err != nil {
			return err
		}
		var n uint64
		if v := refs.Get(hash); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		if err := refs.Put(hash, u64(n+1)); err != nil {
			return err
		}
		usage.AssetBytes += a.Size
		usage.AssetCount++
		added = true
	}
	if !added {
		return nil
	}
	return putJSON(meta, usageKey(orgID), usage)
}

type errBadHash string

func (e errBadHash) Error() string { return "attachment hash " + string(e) + " is not 64 hex digits" }

func readUsage(meta *bolt.Bucket, orgID string) Usage {
	var u Usage
	if raw := meta.Get(usageKey(orgID)); raw != nil {
		_ = json.Unmarshal(raw, &u) // a damaged counter reads as zero; Check reports it
	}
	return u
}

// Asset returns one asset of orgID's library; a hash the org has not stored is not found, even
// when another org has it.
func (db *DB) Asset(orgID, hexHash string) (Asset, error) {
	hash, err := hex.DecodeString(hexHash)
	if err != nil || len(hash) != 32 {
		return Asset{}, notFound("file")
	}
	var a Asset
	err = db.view(func(btx *bolt.Tx) error {
		found, err := getJSON(btx.Bucket(bucketAssets), assetKey(orgID, hash), &a)
		if err == nil && !found {
			err = notFound("file")
		}
		return err
	})
	return a, err
}

// ListAssets pages orgID's library in hash order: up to limit assets after the hash in after
// (empty for the first page), and whether more follow.
func (db *DB) ListAssets(orgID string, after []byte, limit int) ([]Asset, bool, error) {
	if limit < 1 {
		return nil, false, errLimit
	}
	out := []Asset{}
	more := false
	prefix := []byte(orgID)
	err := db.view(func(btx *bolt.Tx) error {
		c := btx.Bucket(bucketAssets).Cursor()
		start := prefix
		if after != nil {
			start = assetKey(orgID, after)
		}
		for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if after != nil && bytes.Equal(k, start) {
				continue
			}
			if len(out) == limit {
				more = true
				return nil
			}
			var a Asset
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	})
	return out, more, err
}

// Usage returns orgID's billed asset bytes and count.
func (db *DB) Usage(orgID string) (Usage, error) {
	var u Usage
	err := db.view(func(btx *bolt.Tx) error {
		u = readUsage(btx.Bucket(bucketMeta), orgID)
		return nil
	})
	return u, err
}

// BlobReferenced reports whether any org's library holds the blob with this hash (hex), so the
// orphan sweeper keeps it.
func (db *DB) BlobReferenced(hexHash string) (bool, error) {
	hash, err := hex.DecodeString(hexHash)
	if err != nil || len(hash) != 32 {
		return false, nil
	}
	var found bool
	err = db.view(func(btx *bolt.Tx) error {
		found = btx.Bucket(bucketBlobRefs).Get(hash) != nil
		return nil
	})
	return found, err
}
