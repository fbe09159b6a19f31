package blobs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

func openStore(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	return s
}

func mustPut(t testing.TB, s *Store, b []byte) Stored {
	t.Helper()
	st, err := s.Put(context.Background(), bytes.NewReader(b))
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	return st
}

func readAll(t testing.TB, s *Store, h Hash) ([]byte, error) {
	t.Helper()
	b, err := s.Open(context.Background(), h)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return io.ReadAll(b)
}

func tmpEntries(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(dir, tmpDirName))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func walkHashes(t testing.TB, s *Store) []Hash {
	t.Helper()
	var hs []Hash
	if err := s.Walk(context.Background(), func(i Info) error { hs = append(hs, i.Hash); return nil }); err != nil {
		t.Fatalf("walk: %v", err)
	}
	return hs
}

func TestPutStoresUnderTheBLAKE3HashInFanOutFolders(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, Options{})
	data := []byte("hello, blobs")
	st := mustPut(t, s, data)
	if want := Hash(blake3.Sum256(data)); st.Hash != want {
		t.Fatalf("hash %s, want %s", st.Hash, want)
	}
	if st.Size != int64(len(data)) || st.Existed {
		t.Fatalf("stored %+v", st)
	}
	hex := st.Hash.String()
	if _, err := os.Stat(filepath.Join(dir, hex[:2], hex[2:4], hex)); err != nil {
		t.Fatalf("blob not at its fan-out path: %v", err)
	}
	got, err := readAll(t, s, st.Hash)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %q, %v", got, err)
	}
	if left := tmpEntries(t, dir); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	if hs := walkHashes(t, s); len(hs) != 1 || hs[0] != st.Hash {
		t.Fatalf("walk found %v", hs)
	}
	if _, err := s.Open(context.Background(), Hash(blake3.Sum256([]byte("other")))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open of a missing hash: %v, want ErrNotFound", err)
	}
}

func TestPutOfStoredBytesWritesNothing(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, Options{})
	data := bytes.Repeat([]byte("same screenshot "), 4096)
	first := mustPut(t, s, data)
	before, err := os.Stat(s.path(first.Hash))
	if err != nil {
		t.Fatal(err)
	}
	for _, store := range []*Store{s, openStore(t, dir, Options{})} { // warm cache, then a fresh process
		again := mustPut(t, store, data)
		if !again.Existed || again.Hash != first.Hash {
			t.Fatalf("second put %+v, want Existed", again)
		}
		after, err := os.Stat(store.path(first.Hash))
		if err != nil {
			t.Fatal(err)
		}
		b, a := before.Sys().(*syscall.Stat_t), after.Sys().(*syscall.Stat_t)
		if b.Ino != a.Ino || !before.ModTime().Equal(after.ModTime()) || b.Ctim != a.Ctim {
			t.Fatalf("the stored file was rewritten: inode %d→%d, mtime %v→%v", b.Ino, a.Ino, before.ModTime(), after.ModTime())
		}
		if left := tmpEntries(t, dir); len(left) != 0 {
			t.Fatalf("temporary files left: %v", left)
		}
	}
}

func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestReadDetectsCorruption(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, Options{})
	data := bytes.Repeat([]byte{0xAB}, 300<<10)
	st := mustPut(t, s, data)
	if _, err := readAll(t, s, st.Hash); err != nil { // now remembered as verified
		t.Fatal(err)
	}
	path := s.path(st.Hash)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, path, 200<<10)
	// Put the mtime back: only the ctime still tells the file changed.
	if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
	for _, store := range []*Store{s, openStore(t, dir, Options{})} {
		if _, err := readAll(t, store, st.Hash); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("read of a flipped byte: %v, want ErrCorrupt", err)
		}
		if err := store.Verify(context.Background(), st.Hash); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("verify: %v, want ErrCorrupt", err)
		}
	}
	// Putting the right bytes again repairs the blob.
	if again := mustPut(t, s, data); again.Existed {
		t.Fatalf("a corrupt copy counted as stored")
	}
	got, err := readAll(t, s, st.Hash)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after repair: %v", err)
	}
}

func TestReadReverifiesAfterThePeriod(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	s := openStore(t, dir, Options{ReverifyAfter: time.Hour, Now: clock})
	st := mustPut(t, s, bytes.Repeat([]byte{7}, 1000))
	path := s.path(st.Hash)
	// Media decay leaves the metadata untouched; emulate it by telling the cache that the
	// damaged file is the one it verified.
	flipByte(t, path, 10)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	s.noteVerified(st.Hash, identOf(fi))
	if _, err := readAll(t, s, st.Hash); err != nil {
		t.Fatalf("within the period the cached verdict stands: %v", err)
	}
	now = now.Add(time.Hour)
	if _, err := readAll(t, s, st.Hash); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("after the period: %v, want ErrCorrupt", err)
	}
}

func TestCrashDuringPutLeavesNoBlob(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, Options{})
	data := bytes.Repeat([]byte("partial "), 8192)
	p, err := s.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write(data[:len(data)/2]); err != nil {
		t.Fatal(err)
	}
	// Abandoned: never committed nor discarded, as if the process died here.
	if left := tmpEntries(t, dir); len(left) != 1 {
		t.Fatalf("expected the half-written temporary file, got %v", left)
	}
	if hs := walkHashes(t, s); len(hs) != 0 {
		t.Fatalf("a partial put is listed: %v", hs)
	}
	reopened := openStore(t, dir, Options{})
	if left := tmpEntries(t, dir); len(left) != 0 {
		t.Fatalf("stale temporary files survive Open: %v", left)
	}
	if hs := walkHashes(t, reopened); len(hs) != 0 {
		t.Fatalf("listed after reopen: %v", hs)
	}
	for _, h := range []Hash{blake3.Sum256(data), blake3.Sum256(data[:len(data)/2])} {
		if _, err := reopened.Open(context.Background(), h); !errors.Is(err, ErrNotFound) {
			t.Fatalf("open: %v, want ErrNotFound", err)
		}
	}
}

func TestDiscardedPutLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, Options{})
	p, err := s.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("not wanted")); err != nil {
		t.Fatal(err)
	}
	p.Discard()
	if _, err := p.Commit(context.Background()); !errors.Is(err, ErrDone) {
		t.Fatalf("commit after discard: %v", err)
	}
	if left := tmpEntries(t, dir); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	if hs := walkHashes(t, s); len(hs) != 0 {
		t.Fatalf("listed: %v", hs)
	}
}

func TestWalkSkipsStrays(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, Options{})
	st := mustPut(t, s, []byte("real"))
	hex := st.Hash.String()
	strays := []string{
		filepath.Join(dir, hex[:2], hex[2:4], hex+".tmp"),
		filepath.Join(dir, hex[:2], hex[2:4], "README"),
		filepath.Join(dir, "zz", "README"),
		filepath.Join(dir, hex[:2], hex[2:4], "00"+hex[2:]), // right name, wrong folder
	}
	for _, p := range strays {
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if hs := walkHashes(t, s); len(hs) != 1 || hs[0] != st.Hash {
		t.Fatalf("walk found %v", hs)
	}
}

func TestDeleteHonoursTheCommitGrace(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	clock := func() time.Time { return now }
	s := openStore(t, dir, Options{CommitGrace: time.Minute, Now: clock})
	st := mustPut(t, s, []byte("orphan"))
	if err := s.Delete(st.Hash); !errors.Is(err, ErrRecentlyCommitted) {
		t.Fatalf("delete right after put: %v, want ErrRecentlyCommitted", err)
	}
	now = now.Add(2 * time.Minute)
	mustPut(t, s, []byte("orphan")) // deduplicated put: a message may reference it again
	if err := s.Delete(st.Hash); !errors.Is(err, ErrRecentlyCommitted) {
		t.Fatalf("delete right after a deduplicated put: %v, want ErrRecentlyCommitted", err)
	}
	now = now.Add(2 * time.Minute)
	if err := s.Delete(st.Hash); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := s.Open(context.Background(), st.Hash); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open after delete: %v", err)
	}
	if err := s.Delete(st.Hash); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
}

func TestConcurrentPutsAndReadsOfOneBlob(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, Options{VerifyConcurrency: 2})
	data := bytes.Repeat([]byte("concurrent "), 50_000)
	want := Hash(blake3.Sum256(data))
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := 0; i < 16; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			st, err := s.Put(context.Background(), bytes.NewReader(data))
			if err == nil && st.Hash != want {
				err = errors.New("wrong hash")
			}
			errs <- err
		}()
		go func() {
			defer wg.Done()
			b, err := s.Open(context.Background(), want)
			if errors.Is(err, ErrNotFound) {
				errs <- nil
				return
			}
			if err == nil {
				var got []byte
				got, err = io.ReadAll(b)
				b.Close()
				if err == nil && !bytes.Equal(got, data) {
					err = errors.New("read different bytes")
				}
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if hs := walkHashes(t, s); len(hs) != 1 {
		t.Fatalf("walk found %d blobs", len(hs))
	}
	if left := tmpEntries(t, dir); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestParseHashAcceptsOnlyTheCanonicalForm(t *testing.T) {
	h := Hash(blake3.Sum256([]byte("x")))
	if got, err := ParseHash(h.String()); err != nil || got != h {
		t.Fatalf("round trip: %v", err)
	}
	upper := []byte(h.String())
	upper[0] = 'A'
	for _, bad := range []string{"", h.String()[:63], h.String() + "0", string(upper), "../" + h.String()[3:]} {
		if _, err := ParseHash(bad); err == nil {
			t.Fatalf("ParseHash(%q) accepted", bad)
		}
	}
}
