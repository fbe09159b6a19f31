package engine

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Secret prefixes: the kind of a bearer secret is visible at a glance in logs and configs.
const (
	SecretAPI     = "ak_"
	SecretWidget  = "wk_"
	SecretVisitor = "vt_"
)

// NewOrg describes an org to create. Zero Rate, Burst or InitialStatus take DefaultOrg's values.
type NewOrg struct {
	Name          string
	Rate          float64
	Burst         int
	InitialStatus Status
}

// Defaults of org create, as the contract's CLI section gives them.
const (
	DefaultRate          = 50
	DefaultBurst         = 100
	DefaultInitialStatus = StatusOpen
)

// Bounds of an org's rate window. Section 8 gives the smallest rate and the largest burst; the
// largest rate is ours: no single server answers a million requests a second, so a larger one
// would only differ from it in the arithmetic. Within these bounds every RateLimit header is a
// whole number of seconds from 1 to MaxBurst/MinRate (10^8).
const (
	MinRate  = 0.01
	MaxRate  = 1_000_000
	MaxBurst = 1_000_000
)

// CheckRate refuses a rate (requests per second) outside [MinRate, MaxRate], NaN included.
func CheckRate(perSecond float64) error {
	if !(perSecond >= MinRate && perSecond <= MaxRate) {
		return Errorf(CodeValidation, "rate must be from 0.01 to 1000000 requests per second (got %g)", perSecond).
			WithDetails(map[string]any{"field": "rate"})
	}
	return nil
}

// CheckBurst refuses a burst outside [1, MaxBurst].
func CheckBurst(burst int) error {
	if burst < 1 || burst > MaxBurst {
		return Errorf(CodeValidation, "burst must be from 1 to 1000000 requests (got %d)", burst).
			WithDetails(map[string]any{"field": "burst"})
	}
	return nil
}

// CreatedOrg is an org with the secrets that were made for it; the secrets are shown only here.
type CreatedOrg struct {
	OrgID     string `json:"org_id"`
	APIKey    string `json:"api_key"`
	WidgetKey string `json:"widget_key"`
}

// CreatedKey is a new API key; the secret is shown only here.
type CreatedKey struct {
	KeyID  string `json:"key_id"`
	APIKey string `json:"api_key"`
}

// CreateOrg creates an org with one API key and its widget key.
func (db *DB) CreateOrg(ctx context.Context, in NewOrg) (CreatedOrg, error) {
	name := strings.TrimSpace(in.Name)
	if name == "" || len([]rune(name)) > 200 {
		return CreatedOrg{}, Errorf(CodeValidation, "org name must be 1 to 200 characters")
	}
	if in.Rate == 0 {
		in.Rate = DefaultRate
	}
	if in.Burst == 0 {
		in.Burst = DefaultBurst
	}
	if in.InitialStatus == "" {
		in.InitialStatus = DefaultInitialStatus
	}
	if err := CheckRate(in.Rate); err != nil {
		return CreatedOrg{}, err
	}
	if err := CheckBurst(in.Burst); err != nil {
		return CreatedOrg{}, err
	}
	if !creatableStatus(in.InitialStatus) {
		return CreatedOrg{}, Errorf(CodeValidation, "initial status must be bot_active, agent_requested or open")
	}
	org := Org{ID: newID(PrefixOrg), Name: name, InitialStatus: in.InitialStatus, Rate: in.Rate, Burst: in.Burst, CreatedAt: db.now()}
	out := CreatedOrg{OrgID: org.ID, APIKey: newSecret(SecretAPI), WidgetKey: newSecret(SecretWidget)}
	err := db.Update(ctx, func(tx *Tx) error {
		if err := putJSON(tx.bolt.Bucket(bucketOrgs), []byte(org.ID), org); err != nil {
			return err
		}
		if err := tx.putKey(out.APIKey, Principal{KeyID: newID(PrefixKey), OrgID: org.ID, Kind: KeyAPI, Name: "default", CreatedAt: org.CreatedAt}); err != nil {
			return err
		}
		return tx.putKey(out.WidgetKey, Principal{KeyID: newID(PrefixKey), OrgID: org.ID, Kind: KeyWidget, Name: "widget", CreatedAt: org.CreatedAt})
	})
	return out, err
}

// OrgUpdate changes an org's rate window; nil fields stay as they are.
type OrgUpdate struct {
	Rate  *float64
	Burst *int
}

// UpdateOrg applies u to the org and returns the result.
func (db *DB) UpdateOrg(ctx context.Context, orgID string, u OrgUpdate) (Org, error) {
	if u.Rate != nil {
		if err := CheckRate(*u.Rate); err != nil {
			return Org{}, err
		}
	}
	if u.Burst != nil {
		if err := CheckBurst(*u.Burst); err != nil {
			return Org{}, err
		}
	}
	var org Org
	err := db.update(ctx, orgID, func(tx *Tx) error {
		b := tx.bolt.Bucket(bucketOrgs)
		found, err := getJSON(b, []byte(orgID), &org)
		if err != nil {
			return err
		}
		if !found {
			return notFound("org")
		}
		if u.Rate != nil {
			org.Rate = *u.Rate
		}
		if u.Burst != nil {
			org.Burst = *u.Burst
		}
		return putJSON(b, []byte(orgID), org)
	})
	return org, err
}

// CreateAPIKey adds an API key to an existing org.
func (db *DB) CreateAPIKey(ctx context.Context, orgID, name string) (CreatedKey, error) {
	if name == "" {
		name = "api"
	}
	out := CreatedKey{KeyID: newID(PrefixKey), APIKey: newSecret(SecretAPI)}
	err := db.update(ctx, orgID, func(tx *Tx) error {
		if tx.bolt.Bucket(bucketOrgs).Get([]byte(orgID)) == nil {
			return notFound("org")
		}
		return tx.putKey(out.APIKey, Principal{KeyID: out.KeyID, OrgID: orgID, Kind: KeyAPI, Name: name, CreatedAt: tx.now})
	})
	return out, err
}

// Org returns one org.
func (db *DB) Org(orgID string) (Org, error) {
	var org Org
	err := db.view(func(tx *bolt.Tx) error {
		found, err := getJSON(tx.Bucket(bucketOrgs), []byte(orgID), &org)
		if err == nil && !found {
			err = notFound("org")
		}
		return err
	})
	return org, err
}

// Orgs returns every org, oldest first.
func (db *DB) Orgs() ([]Org, error) {
	var orgs []Org
	err := db.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOrgs).ForEach(func(_, v []byte) error {
			var o Org
			if err := json.Unmarshal(v, &o); err != nil {
				return err
			}
			orgs = append(orgs, o)
			return nil
		})
	})
	return orgs, err
}

func (tx *Tx) putKey(secret string, p Principal) error {
	h := hashSecret(secret)
	return putJSON(tx.bolt.Bucket(bucketKeys), h[:], p)
}

type authEntry struct {
	principal Principal
	expires   time.Time
}

// authCacheTTL bounds how long a looked-up key is trusted from memory; the bound keeps it from
// growing with every visitor token ever seen. A revoked key is dropped from the cache by
// RevokeAPIKey itself, so the TTL never delays a revocation.
const (
	authCacheTTL  = time.Minute
	authCacheSize = 100_000
)

var errUnauthorized = Errorf(CodeUnauthorized, "missing or unknown key")

// Authenticate finds who a bearer secret belongs to. Unknown secrets are unauthorized; they are
// not cached, so a flood of wrong guesses costs reads but no memory.
func (db *DB) Authenticate(secret string) (Principal, error) {
	if secret == "" {
		return Principal{}, errUnauthorized
	}
	if strings.HasPrefix(secret, SecretRealtime) {
		return db.useRealtimeToken(secret)
	}
	h := hashSecret(secret)
	now := db.clock()
	db.authMu.Lock()
	e, ok := db.authCache[h]
	gen := db.authGen
	db.authMu.Unlock()
	if ok && now.Before(e.expires) {
		return e.principal, nil
	}
	var p Principal
	var found bool
	err := db.view(func(tx *bolt.Tx) error {
		var err error
		found, err = getJSON(tx.Bucket(bucketKeys), h[:], &p)
		return err
	})
	if err != nil {
		return Principal{}, err
	}
	if !found {
		return Principal{}, errUnauthorized
	}
	db.authMu.Lock()
	if len(db.authCache) >= authCacheSize {
		clear(db.authCache)
	}
	if gen == db.authGen {
		db.authCache[h] = authEntry{principal: p, expires: now.Add(authCacheTTL)}
	}
	db.authMu.Unlock()
	return p, nil
}

// KeyInfo is an API key as GET /keys lists it: never its secret.
type KeyInfo struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	CreatedAt Time   `json:"created_at"`
}

// APIKeys lists an org's API keys, oldest first.
func (db *DB) APIKeys(orgID string) ([]KeyInfo, error) {
	out := []KeyInfo{}
	err := db.view(func(btx *bolt.Tx) error {
		return btx.Bucket(bucketKeys).ForEach(func(_, v []byte) error {
			var p Principal
			if err := json.Unmarshal(v, &p); err != nil {
				return err
			}
			if p.OrgID == orgID && p.Kind == KeyAPI {
				out = append(out, KeyInfo{ID: p.KeyID, Name: p.Name, CreatedAt: p.CreatedAt})
			}
			return nil
		})
	})
	slices.SortFunc(out, func(a, b KeyInfo) int { return strings.Compare(a.ID, b.ID) })
	return out, err
}

// RevokeAPIKey deletes an org's API key. Once it returns, Authenticate refuses the key: its
// cache entry is gone and no lookup that raced the deletion can put it back.
func (db *DB) RevokeAPIKey(ctx context.Context, orgID, keyID string) error {
	var revoked [32]byte
	err := db.update(ctx, orgID, func(tx *Tx) error {
		keys := tx.bolt.Bucket(bucketKeys)
		var hash []byte
		err := keys.ForEach(func(k, v []byte) error {
			var p Principal
			if err := json.Unmarshal(v, &p); err != nil {
				return err
			}
			if p.OrgID == orgID && p.Kind == KeyAPI && p.KeyID == keyID {
				hash = append([]byte(nil), k...)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if hash == nil {
			return notFound("key")
		}
		copy(revoked[:], hash)
		return keys.Delete(hash)
	})
	if err != nil {
		return err
	}
	db.authMu.Lock()
	db.authGen++
	delete(db.authCache, revoked)
	db.authMu.Unlock()
	return nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

func getJSON(b *bolt.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	return true, json.Unmarshal(raw, v)
}
