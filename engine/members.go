package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/mail"
	"strings"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/argon2"
)

// PrefixMember is the prefix of team member ids.
const PrefixMember = "mem_"

// MemberRole is what a team member may do: admins also manage members and keys.
type MemberRole string

const (
	RoleAdmin MemberRole = "admin"
	RoleAgent MemberRole = "agent"
)

// Member is a person on an org's team who signs in to the dashboard. Members are never deleted,
// so the authorship of their replies stays resolvable; they are disabled instead.
type Member struct {
	ID        string     `json:"id"`
	Email     string     `json:"email"`
	Name      string     `json:"name"`
	Role      MemberRole `json:"role"`
	Disabled  bool       `json:"disabled"`
	CreatedAt Time       `json:"created_at"`
}

// memberRecord is the stored form. PasswordVersion grows with every password change; a session
// remembers the version it was opened under, so a change ends every other session at once.
type memberRecord struct {
	Member
	OrgID           string `json:"org_id"`
	PasswordHash    string `json:"password_hash"`
	PasswordVersion uint64 `json:"password_version"`
}

// Argon2id parameters: OWASP's first recommended set (19 MiB, 2 passes, 1 lane). RFC 9106's
// 64 MiB profile would make every sign-in hold 64 MiB, and a burst of sign-ins on a small server
// a few hundred; 19 MiB and 2 passes keep a guess costly for an attacker with a GPU (memory
// bound) while a sign-in takes tens of milliseconds. The parameters are stored in every hash, so
// they can be raised later without invalidating stored passwords.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

// Limits of member fields.
const (
	MaxMemberNameLength = 200
	MinPasswordLength   = 12
	MaxPasswordLength   = 1024
)

// hashPassword encodes an argon2id hash in the PHC string format.
func hashPassword(password string) string {
	salt := make([]byte, argonSaltLen)
	rand.Read(salt)
	return encodeHash(salt, argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen))
}

// encodeHash writes an argon2id key of this build's parameters in the PHC string format.
func encodeHash(salt, key []byte) string {
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

// checkPassword reports whether password matches an encoded hash, in time that depends only on
// the hash's parameters.
func checkPassword(encoded, password string) bool {
	var version int
	var memory, passes uint32
	var threads uint8
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &memory, &passes, &threads); err != nil {
		return false
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, passes, memory, threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// decoyHash is checked against when no member has the email given, so a wrong email costs the
// same argon2id work as a wrong password and the two cannot be told apart by timing. Its salt
// and key are random rather than a password's hash: checking costs the same, no password matches
// it, and no process pays an argon2id hash (19 MiB, tens of milliseconds) when it starts.
var decoyHash = func() string {
	salt, key := make([]byte, argonSaltLen), make([]byte, argonKeyLen)
	rand.Read(salt)
	rand.Read(key)
	return encodeHash(salt, key)
}()

// NewPassword makes a password to show once: 20 characters of base32, 100 bits.
func NewPassword() string {
	b := make([]byte, 13)
	rand.Read(b)
	return secretEncoding.EncodeToString(b)[:20]
}

// NewMember describes a member to create. An empty Password makes one (returned by CreateMember).
type NewMember struct {
	Email    string
	Name     string
	Role     MemberRole
	Password string
}

// CreatedMember is a new member with its password, shown only here.
type CreatedMember struct {
	Member   Member `json:"member"`
	Password string `json:"password"`
}

func normalizeEmail(email string) (string, error) {
	email = strings.TrimSpace(email)
	addr, err := mail.ParseAddress(email)
	if err != nil || addr.Address != email || addr.Name != "" || utf8.RuneCountInString(email) > MaxEmailLength {
		return "", Errorf(CodeValidation, "email must be a plain address such as ana@example.com").
			WithDetails(map[string]any{"field": "email"})
	}
	return email, nil
}

func checkMemberName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" || utf8.RuneCountInString(name) > MaxMemberNameLength {
		return "", Errorf(CodeValidation, "name must be 1 to %d characters", MaxMemberNameLength).
			WithDetails(map[string]any{"field": "name"})
	}
	return name, nil
}

func checkRole(r MemberRole) error {
	if r != RoleAdmin && r != RoleAgent {
		return Errorf(CodeValidation, "role must be admin or agent").WithDetails(map[string]any{"field": "role"})
	}
	return nil
}

// CheckNewPassword refuses a password too short to resist guessing or too long to hash cheaply.
func CheckNewPassword(password, field string) error {
	if n := utf8.RuneCountInString(password); n < MinPasswordLength || n > MaxPasswordLength {
		return Errorf(CodeValidation, "a password must be %d to %d characters", MinPasswordLength, MaxPasswordLength).
			WithDetails(map[string]any{"field": field})
	}
	return nil
}

// emailKey is an email's key in member_emails: unique on the whole server, case-insensitively.
func emailKey(email string) []byte { return []byte(strings.ToLower(email)) }

// CreateMember adds a member to an org. The email must be unused on the whole server.
func (db *DB) CreateMember(ctx context.Context, orgID string, in NewMember) (CreatedMember, error) {
	email, err := normalizeEmail(in.Email)
	if err != nil {
		return CreatedMember{}, err
	}
	name, err := checkMemberName(in.Name)
	if err != nil {
		return CreatedMember{}, err
	}
	if in.Role == "" {
		in.Role = RoleAgent
	}
	if err := checkRole(in.Role); err != nil {
		return CreatedMember{}, err
	}
	password := in.Password
	if password == "" {
		password = NewPassword()
	} else if err := CheckNewPassword(password, "password"); err != nil {
		return CreatedMember{}, err
	}
	rec := memberRecord{
		Member:       Member{ID: newID(PrefixMember), Email: email, Name: name, Role: in.Role},
		OrgID:        orgID,
		PasswordHash: hashPassword(password), // before the unit: the commit loop must not wait for it
	}
	err = db.update(ctx, orgID, func(tx *Tx) error {
		if tx.bolt.Bucket(bucketOrgs).Get([]byte(orgID)) == nil {
			return notFound("org")
		}
		emails := tx.bolt.Bucket(bucketMemberEmails)
		if emails.Get(emailKey(email)) != nil {
			return Errorf(CodeValidation, "a member with this email already exists").WithDetails(map[string]any{"field": "email"})
		}
		rec.CreatedAt = tx.now
		if err := emails.Put(emailKey(email), []byte(orgID+rec.ID)); err != nil {
			return err
		}
		return putJSON(tx.bolt.Bucket(bucketMembers), []byte(orgID+rec.ID), rec)
	})
	if err != nil {
		return CreatedMember{}, err
	}
	return CreatedMember{Member: rec.Member, Password: password}, nil
}

func readMember(btx *bolt.Tx, orgID, memberID string) (*memberRecord, error) {
	var rec memberRecord
	found, err := getJSON(btx.Bucket(bucketMembers), []byte(orgID+memberID), &rec)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, notFound("member")
	}
	return &rec, nil
}

// Member returns one member of an org.
func (db *DB) Member(orgID, memberID string) (Member, error) {
	var out Member
	err := db.view(func(btx *bolt.Tx) error {
		rec, err := readMember(btx, orgID, memberID)
		if err == nil {
			out = rec.Member
		}
		return err
	})
	return out, err
}

// Members returns an org's members, oldest first (ids are ULIDs).
func (db *DB) Members(orgID string) ([]Member, error) {
	out := []Member{}
	err := db.view(func(btx *bolt.Tx) error {
		c := btx.Bucket(bucketMembers).Cursor()
		prefix := []byte(orgID)
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var rec memberRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			out = append(out, rec.Member)
		}
		return nil
	})
	return out, err
}

// MemberPatch changes a member; nil fields stay as they are.
type MemberPatch struct {
	Name     *string
	Role     *MemberRole
	Disabled *bool
}

// UpdateMember applies a patch. Disabling a member ends its sessions at once: every session
// reads its member on every request.
func (db *DB) UpdateMember(ctx context.Context, orgID, memberID string, patch MemberPatch) (Member, error) {
	if patch.Name != nil {
		name, err := checkMemberName(*patch.Name)
		if err != nil {
			return Member{}, err
		}
		patch.Name = &name
	}
	if patch.Role != nil {
		if err := checkRole(*patch.Role); err != nil {
			return Member{}, err
		}
	}
	var out Member
	err := db.update(ctx, orgID, func(tx *Tx) error {
		rec, err := readMember(tx.bolt, orgID, memberID)
		if err != nil {
			return err
		}
		if patch.Name != nil {
			rec.Name = *patch.Name
		}
		if patch.Role != nil {
			rec.Role = *patch.Role
		}
		if patch.Disabled != nil {
			rec.Disabled = *patch.Disabled
		}
		out = rec.Member
		return putJSON(tx.bolt.Bucket(bucketMembers), []byte(orgID+memberID), rec)
	})
	return out, err
}

var errSignIn = Errorf(CodeUnauthorized, "wrong email or password")

// memberByEmail finds the stored member with an email, or nil.
func (db *DB) memberByEmail(email string) (*memberRecord, error) {
	var rec *memberRecord
	err := db.view(func(btx *bolt.Tx) error {
		key := btx.Bucket(bucketMemberEmails).Get(emailKey(strings.TrimSpace(email)))
		if key == nil {
			return nil
		}
		var r memberRecord
		found, err := getJSON(btx.Bucket(bucketMembers), key, &r)
		if found {
			rec = &r
		}
		return err
	})
	return rec, err
}

// checkCredentials finds the member an email and password belong to. A wrong email, a wrong
// password and a disabled member all answer the same error after the same argon2id work.
func (db *DB) checkCredentials(email, password string) (*memberRecord, error) {
	rec, err := db.memberByEmail(email)
	if err != nil {
		return nil, err
	}
	if len(password) > MaxPasswordLength*4 {
		password = password[:MaxPasswordLength*4] // bounds the hashing work; no stored password is this long
	}
	if rec == nil {
		checkPassword(decoyHash, password)
		return nil, errSignIn
	}
	if !checkPassword(rec.PasswordHash, password) || rec.Disabled {
		return nil, errSignIn
	}
	return rec, nil
}

// memberIsInOrg reports whether memberID names a member of orgID (disabled ones included: a
// conversation may stay assigned to someone who left).
func memberIsInOrg(btx *bolt.Tx, orgID, memberID string) bool {
	return btx.Bucket(bucketMembers).Get([]byte(orgID+memberID)) != nil
}
