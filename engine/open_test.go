package engine

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestOpenWalksABigFileWithoutKeepingItMapped: a file under fullVerifyLimit is still walked
// page by page at Open (a zeroed page in its middle is refused), yet once Open returns, only a
// bounded part of it is mapped in the process, not the whole file the walk read: the walk's
// pages must not stay in the server's resident memory.
func TestOpenWalksABigFileWithoutKeepingItMapped(t *testing.T) {
	if _, err := os.Stat("/proc/self/smaps"); err != nil {
		t.Skip("needs /proc/self/smaps to see what is mapped")
	}
	dir := t.TempDir()
	opts := Options{Buckets: []string{"bulk"}}
	db, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	// 12,000 values of 1,000 bytes: a file of about 26 MiB whose pages are nearly all leaves.
	value := make([]byte, 1000)
	for unit := range 4 {
		err := db.Update(context.Background(), func(tx *Tx) error {
			b, err := tx.Bucket("bulk")
			if err != nil {
				return err
			}
			for i := range 3000 {
				if err := b.Put(u64(uint64(unit*3000+i)), value); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, DatabaseFile)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() < 20<<20 || info.Size() > fullVerifyLimit {
		t.Fatalf("set-up: the file is %d bytes, want 20 MiB to fullVerifyLimit", info.Size())
	}

	db, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	mapped := mappedBytes(t, path)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if mapped > info.Size()/2 {
		t.Errorf("after Open, %d KiB of the %d KiB file are mapped: the verification's pages stayed in memory", mapped>>10, info.Size()>>10)
	}

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	page := os.Getpagesize()
	const freelistAt = 16 + 32 // page header, then magic, version, page size, flags, root bucket
	spared := map[uint64]bool{
		binary.LittleEndian.Uint64(raw[freelistAt:]):      true,
		binary.LittleEndian.Uint64(raw[page+freelistAt:]): true,
	}
	middle := uint64(len(raw) / page / 2)
	for id := middle; id < middle+10; id++ {
		if !spared[id] {
			clear(raw[int(id)*page : int(id+1)*page])
		}
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if db, err := Open(dir, opts); !errors.Is(err, ErrDamaged) {
		if err == nil {
			db.Close()
		}
		t.Fatalf("Open of a file with zeroed pages in its middle answered %v, want ErrDamaged", err)
	}
}

// mappedBytes is how much of the file at path is resident in this process's mappings.
func mappedBytes(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var total int64
	inFile := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			inFile = len(fields) == 6 && fields[5] == path
			continue
		}
		if inFile && len(fields) == 3 && fields[0] == "Rss:" {
			kib, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			total += kib << 10
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}
