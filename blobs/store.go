package blobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/zeebo/blake3"
)

// Options tune a Store; the zero value gives the defaults of DefaultOptions.
type Options struct {
	// ReverifyAfter is how long a blob that was hashed and found good is served again without
	// re-hashing, as long as its file is unchanged (same inode, size, mtime and ctime). A
	// change to the file's metadata always forces a new check; this period bounds how long
	// silent media decay can go unnoticed. Default 24h.
	ReverifyAfter time.Duration
	// VerifyConcurrency caps how many blobs are being hashed for a read at one time; readers
	// beyond it wait. With a fixed buffer per hashing reader, it bounds the memory reads use,
	// however many readers there are. Default 4.
	VerifyConcurrency int
	// CommitGrace is how long after a put (new or deduplicated) Delete refuses the blob, so a
	// sweeper cannot remove bytes a message is about to reference. Default 1h.
	CommitGrace time.Duration
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// DefaultOptions returns the defaults, in one place.
func DefaultOptions() Options {
	return Options{ReverifyAfter: 24 * time.Hour, VerifyConcurrency: 4, CommitGrace: time.Hour, Now: time.Now}
}

const (
	tmpDirName     = "tmp"
	verifyBufSize  = 256 << 10
	maxVerifiedLen = 1 << 16
)

// Store is a content-addressed blob directory: each blob is a file named by the BLAKE3 hash of
// its bytes, at <root>/<h[0:2]>/<h[2:4]>/<hex>. It knows nothing of who references a blob.
//
// Guarantees:
//   - A committed blob is durable: its bytes and its directory entry were fsync'd before
//     Commit returned.
//   - A blob is visible complete or not at all: bytes are written to <root>/tmp (the same
//     file system, so the rename into place is atomic) and never under a blob's name; Open
//     of the store deletes whatever an interrupted put left in tmp.
//   - The hash is computed from the bytes as they stream in, never in a second pass.
//   - Putting bytes that are already stored writes no blob: no rename, no fsync. (The bytes
//     still stream through an unsynced temporary file, since the hash is only known at the
//     end; it is deleted at once.)
//   - A read never returns bytes that do not hash to their name: it returns ErrCorrupt.
//
// A Store is safe for concurrent use. It assumes it is the only process writing its directory
// (the server holds its database lock while it has the store open).
type Store struct {
	root string
	tmp  string
	opts Options

	verifySem chan struct{}
	bufs      sync.Pool
	locks     keyedMutex

	mu        sync.Mutex
	verified  map[Hash]verifiedFile
	committed map[Hash]time.Time
	lastPrune time.Time
}

type verifiedFile struct {
	id fileIdent
	at time.Time
}

// Open opens (creating it if needed) the store rooted at dir and removes temporary files an
// interrupted put left behind.
func Open(dir string, opts Options) (*Store, error) {
	def := DefaultOptions()
	if opts.ReverifyAfter <= 0 {
		opts.ReverifyAfter = def.ReverifyAfter
	}
	if opts.VerifyConcurrency <= 0 {
		opts.VerifyConcurrency = def.VerifyConcurrency
	}
	if opts.CommitGrace <= 0 {
		opts.CommitGrace = def.CommitGrace
	}
	if opts.Now == nil {
		opts.Now = def.Now
	}
	s := &Store{
		root:      dir,
		tmp:       filepath.Join(dir, tmpDirName),
		opts:      opts,
		verifySem: make(chan struct{}, opts.VerifyConcurrency),
		verified:  make(map[Hash]verifiedFile),
		committed: make(map[Hash]time.Time),
	}
	s.bufs.New = func() any { b := make([]byte, verifyBufSize); return &b }
	if err := os.MkdirAll(s.tmp, 0o750); err != nil {
		return nil, fmt.Errorf("blobs: create store: %w", err)
	}
	stale, err := os.ReadDir(s.tmp)
	if err != nil {
		return nil, fmt.Errorf("blobs: list temporary files: %w", err)
	}
	for _, e := range stale {
		if err := os.RemoveAll(filepath.Join(s.tmp, e.Name())); err != nil {
			return nil, fmt.Errorf("blobs: remove a stale temporary file: %w", err)
		}
	}
	return s, nil
}

// path returns where the blob named h lives (or would live).
func (s *Store) path(h Hash) string {
	hex := h.String()
	return filepath.Join(s.root, hex[0:2], hex[2:4], hex)
}

// Begin starts a two-phase put: write the bytes into the Pending, inspect them through its
// Reader while nobody else can see them, then Commit or Discard. A Pending is used by one
// goroutine; always Discard it (a no-op after Commit) so its temporary file goes away.
func (s *Store) Begin() (*Pending, error) {
	f, err := os.CreateTemp(s.tmp, "put-*")
	if err != nil {
		return nil, fmt.Errorf("blobs: start a put: %w", err)
	}
	return &Pending{s: s, f: f, h: blake3.New()}, nil
}

// Put stores everything r yields and returns its hash; a convenience over Begin and Commit.
func (s *Store) Put(ctx context.Context, r io.Reader) (Stored, error) {
	p, err := s.Begin()
	if err != nil {
		return Stored{}, err
	}
	defer p.Discard()
	if _, err := io.Copy(p, r); err != nil {
		return Stored{}, err
	}
	return p.Commit(ctx)
}

// Stored describes a committed blob.
type Stored struct {
	Hash Hash
	Size int64
	// Existed is true when the bytes were already stored and nothing was written.
	Existed bool
}

// Pending is a put in progress: bytes written to it are hashed as they pass and kept in a
// temporary file that no reader of the store can see.
type Pending struct {
	s    *Store
	f    *os.File
	h    *blake3.Hasher
	size int64
	done bool
	// renamed: the temporary name is gone, so Discard must not remove it (it may be reused).
	renamed bool
}

// Write appends b to the pending blob.
func (p *Pending) Write(b []byte) (int, error) {
	if p.done {
		return 0, ErrDone
	}
	n, err := p.f.Write(b)
	p.h.Write(b[:n])
	p.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("blobs: write: %w", err)
	}
	return n, nil
}

// Size is the number of bytes written so far.
func (p *Pending) Size() int64 { return p.size }

// Hash is the hash of the bytes written so far.
func (p *Pending) Hash() Hash {
	var h Hash
	p.h.Sum(h[:0])
	return h
}

// Reader reads back the bytes written so far, for inspection before Commit.
func (p *Pending) Reader() *io.SectionReader { return io.NewSectionReader(p.f, 0, p.size) }

// Discard abandons the put and removes its temporary file. It is safe to call more than once
// and after Commit.
func (p *Pending) Discard() {
	if p.done {
		return
	}
	p.done = true
	name := p.f.Name()
	_ = p.f.Close()
	if !p.renamed {
		_ = os.Remove(name)
	}
}

// Commit makes the blob visible under its hash, durably. When a good copy is already stored,
// it writes nothing and reports Existed. A stored copy that fails its hash check is replaced.
func (p *Pending) Commit(ctx context.Context) (Stored, error) {
	if p.done {
		return Stored{}, ErrDone
	}
	s, sum := p.s, p.Hash()
	st := Stored{Hash: sum, Size: p.size}
	unlock := s.locks.lock(sum)
	defer unlock()
	final := s.path(sum)

	if f, err := os.Open(final); err == nil {
		err = s.verifyOpen(ctx, sum, f, false)
		_ = f.Close()
		switch {
		case err == nil:
			p.Discard()
			s.noteCommitted(sum)
			st.Existed = true
			return st, nil
		case !errors.Is(err, ErrCorrupt):
			p.Discard()
			return Stored{}, err
		}
		// A corrupt copy: fall through and rename the good bytes over it.
	} else if !errors.Is(err, fs.ErrNotExist) {
		p.Discard()
		return Stored{}, fmt.Errorf("blobs: look for an existing copy: %w", err)
	}

	defer p.Discard()
	if err := s.makeFanOut(filepath.Dir(final)); err != nil {
		return Stored{}, err
	}
	if err := p.f.Sync(); err != nil {
		return Stored{}, fmt.Errorf("blobs: sync: %w", err)
	}
	if err := os.Rename(p.f.Name(), final); err != nil {
		return Stored{}, fmt.Errorf("blobs: rename into place: %w", err)
	}
	p.renamed = true
	if err := syncDir(filepath.Dir(final)); err != nil {
		return Stored{}, err
	}
	// The bytes on disk are the ones just hashed: trust them until the next periodic check.
	if fi, err := p.f.Stat(); err == nil {
		s.noteVerified(sum, identOf(fi))
	}
	s.noteCommitted(sum)
	return st, nil
}

// makeFanOut creates the two fan-out levels above a blob, syncing each parent whose listing
// changed so the new directories survive a crash.
func (s *Store) makeFanOut(leaf string) error {
	mid := filepath.Dir(leaf)
	for _, d := range []string{mid, leaf} {
		err := os.Mkdir(d, 0o750)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("blobs: create a fan-out folder: %w", err)
		}
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("blobs: open folder to sync: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("blobs: sync folder: %w", err)
	}
	return nil
}

// Blob is an open, verified blob. It reads straight from its file, so a Range request costs no
// copy, a reader holds no buffer, and io.Copy to a socket can use sendfile (WriteTo). Close it.
type Blob struct {
	f       *os.File
	hash    Hash
	size    int64
	modTime time.Time
}

// Read reads from the current offset.
func (b *Blob) Read(p []byte) (int, error) { return b.f.Read(p) }

// ReadAt reads at an absolute offset, independent of Read and Seek.
func (b *Blob) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }

// Seek sets the offset of the next Read.
func (b *Blob) Seek(off int64, whence int) (int64, error) { return b.f.Seek(off, whence) }

// WriteTo copies the rest of the blob to w, with sendfile when w is a socket.
func (b *Blob) WriteTo(w io.Writer) (int64, error) { return b.f.WriteTo(w) }

// Close releases the file.
func (b *Blob) Close() error { return b.f.Close() }

// Size is the blob's length in bytes.
func (b *Blob) Size() int64 { return b.size }

// Hash is the blob's name.
func (b *Blob) Hash() Hash { return b.hash }

// ModTime is when the blob was first stored.
func (b *Blob) ModTime() time.Time { return b.modTime }

// Open returns the blob named h, checked against its hash: ErrNotFound when it is not stored,
// ErrCorrupt when its bytes no longer match.
//
// The check is a full re-hash the first time a file is opened, whenever its inode, size, mtime
// or ctime differ from the last good check, and after Options.ReverifyAfter; otherwise the
// remembered verdict stands. Hashing on every read would mean either holding each blob in
// memory until its last byte is checked (15 MiB a reader) or reading it twice; remembering the
// verdict keeps a read to one pass over the file with no buffer, while at most
// VerifyConcurrency hashes run at once, each with one pooled 256 KiB buffer, and concurrent
// opens of one unchecked blob share a single hash.
func (s *Store) Open(ctx context.Context, h Hash) (*Blob, error) {
	f, err := os.Open(s.path(h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("blobs: open: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("blobs: stat: %w", err)
	}
	if !s.isVerified(h, identOf(fi)) {
		unlock := s.locks.lock(h)
		err = s.verifyOpen(ctx, h, f, false)
		unlock()
		if err != nil {
			_ = f.Close()
			return nil, err
		}
	}
	return &Blob{f: f, hash: h, size: fi.Size(), modTime: fi.ModTime()}, nil
}

// Verify re-hashes the blob named h now, whatever the cache says: nil, ErrNotFound or
// ErrCorrupt. For a scrubber.
func (s *Store) Verify(ctx context.Context, h Hash) error {
	f, err := os.Open(s.path(h))
	if errors.Is(err, fs.ErrNotExist) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("blobs: open: %w", err)
	}
	defer f.Close()
	unlock := s.locks.lock(h)
	defer unlock()
	return s.verifyOpen(ctx, h, f, true)
}

// verifyOpen checks f against h, unless the cache already vouches for this very file and
// force is off. The caller holds h's lock, so concurrent readers of one blob hash it once.
func (s *Store) verifyOpen(ctx context.Context, h Hash, f *os.File, force bool) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("blobs: stat: %w", err)
	}
	id := identOf(fi)
	if !force && s.isVerified(h, id) {
		return nil
	}
	select {
	case s.verifySem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.verifySem }()
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp

	hasher := blake3.New()
	var off int64
	for {
		n, err := f.ReadAt(buf, off)
		hasher.Write(buf[:n])
		off += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("blobs: read to verify: %w", err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	var got Hash
	hasher.Sum(got[:0])
	if got != h {
		s.forgetVerified(h)
		return fmt.Errorf("%w: %s", ErrCorrupt, h)
	}
	s.noteVerified(h, id)
	return nil
}

func (s *Store) isVerified(h Hash, id fileIdent) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.verified[h]
	return ok && v.id == id && s.opts.Now().Sub(v.at) < s.opts.ReverifyAfter
}

func (s *Store) noteVerified(h Hash, id fileIdent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.verified) >= maxVerifiedLen {
		// Forgetting costs only a re-hash on the next read; map order makes this a random pick.
		n := 0
		for k := range s.verified {
			delete(s.verified, k)
			if n++; n >= maxVerifiedLen/8 {
				break
			}
		}
	}
	s.verified[h] = verifiedFile{id: id, at: s.opts.Now()}
}

func (s *Store) forgetVerified(h Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.verified, h)
}

func (s *Store) noteCommitted(h Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	s.committed[h] = now
	if now.Sub(s.lastPrune) > s.opts.CommitGrace {
		for k, t := range s.committed {
			if now.Sub(t) >= s.opts.CommitGrace {
				delete(s.committed, k)
			}
		}
		s.lastPrune = now
	}
}

// Delete removes the blob named h, for a sweeper that found no reference to it. It refuses,
// with ErrRecentlyCommitted, a blob put (new or deduplicated) or written within CommitGrace:
// its reference may not be committed yet. A missing blob is ErrNotFound. The removal is not
// fsync'd: a crash can bring the blob back, and the next sweep removes it again.
func (s *Store) Delete(h Hash) error {
	unlock := s.locks.lock(h)
	defer unlock()
	now := s.opts.Now()
	s.mu.Lock()
	t, recent := s.committed[h]
	s.mu.Unlock()
	if recent && now.Sub(t) < s.opts.CommitGrace {
		return ErrRecentlyCommitted
	}
	p := s.path(h)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("blobs: stat: %w", err)
	}
	if now.Sub(fi.ModTime()) < s.opts.CommitGrace {
		return ErrRecentlyCommitted
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("blobs: delete: %w", err)
	}
	s.forgetVerified(h)
	return nil
}

// Info describes a stored blob as Walk finds it.
type Info struct {
	Hash    Hash
	Size    int64
	ModTime time.Time
}

// Walk calls fn for every stored blob, in no particular order, without reading any blob. Files
// that are not blobs (temporary files, strays) are skipped. An error from fn stops the walk and
// is returned. Blobs put or deleted during the walk may or may not be seen.
func (s *Store) Walk(ctx context.Context, fn func(Info) error) error {
	tops, err := os.ReadDir(s.root)
	if err != nil {
		return fmt.Errorf("blobs: list store: %w", err)
	}
	for _, top := range tops {
		if !top.IsDir() || !isHexOfLen(top.Name(), 2) {
			continue
		}
		mids, err := os.ReadDir(filepath.Join(s.root, top.Name()))
		if err != nil {
			return fmt.Errorf("blobs: list store: %w", err)
		}
		for _, mid := range mids {
			if !mid.IsDir() || !isHexOfLen(mid.Name(), 2) {
				continue
			}
			dir := filepath.Join(s.root, top.Name(), mid.Name())
			files, err := os.ReadDir(dir)
			if err != nil {
				return fmt.Errorf("blobs: list store: %w", err)
			}
			for _, f := range files {
				name := f.Name()
				h, err := ParseHash(name)
				if err != nil || !f.Type().IsRegular() || name[0:2] != top.Name() || name[2:4] != mid.Name() {
					continue
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				fi, err := f.Info()
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				if err != nil {
					return fmt.Errorf("blobs: stat: %w", err)
				}
				if err := fn(Info{Hash: h, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func isHexOfLen(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < n; i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// keyedMutex serialises work on one hash (a commit, a verification, a delete) without a lock
// for every hash ever seen: entries live only while someone holds or waits for them.
type keyedMutex struct {
	mu sync.Mutex
	m  map[Hash]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedMutex) lock(h Hash) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[Hash]*keyedEntry)
	}
	e := k.m[h]
	if e == nil {
		e = &keyedEntry{}
		k.m[h] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, h)
		}
		k.mu.Unlock()
	}
}
