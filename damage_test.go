package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
)

// soundDatabase writes a database with enough rows to span many pages and returns its bytes.
func soundDatabase(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	db, err := engine.Open(dir, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	org, err := db.CreateOrg(ctx, engine.NewOrg{Name: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	conv, _, err := db.CreateConversation(ctx, org.OrgID, engine.NewConversation{Status: engine.StatusOpen}, nil)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Repeat("a fairly long line of text ", 40)
	for range 150 {
		if _, _, err := db.PostMessage(ctx, engine.NewMessage{OrgID: org.OrgID, ConversationID: conv.Conversation.ID, Author: engine.AuthorAgent, APIKeyID: "key_test", Text: text}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, engine.DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// damagedFiles are the ways a database file is found broken: cut short by a full disk or a bad
// copy, pages overwritten with zeroes, emptied, or not a database at all.
func damagedFiles(t *testing.T) map[string][]byte {
	t.Helper()
	sound := soundDatabase(t)
	page := os.Getpagesize()
	if len(sound) < 40*page {
		t.Fatalf("set-up: the sound database is only %d bytes", len(sound))
	}
	// Zero ten data pages, sparing the freelist page that either meta names, so the damage is
	// met while reading the data rather than at bbolt's open.
	zeroed := append([]byte(nil), sound...)
	const freelistAt = 16 + 32 // page header, then magic, version, page size, flags, root bucket
	spared := map[uint64]bool{
		binary.LittleEndian.Uint64(sound[freelistAt:]):      true,
		binary.LittleEndian.Uint64(sound[page+freelistAt:]): true,
	}
	for id := uint64(10); id < 20; id++ {
		if !spared[id] {
			clear(zeroed[int(id)*page : int(id+1)*page])
		}
	}
	garbage := make([]byte, 64<<10)
	rand.Read(garbage)
	return map[string][]byte{
		"truncated":               sound[:len(sound)/2],
		"zeroed pages":            zeroed,
		"zeroed metas":            append(make([]byte, 2*page), sound[2*page:]...),
		"empty":                   {},
		"shorter than a database": sound[:page],
		"garbage":                 garbage,
	}
}

// TestDamagedDatabaseRefusedWithOneLine: serve on a damaged file exits 1 with one line that
// names the file and points at check and the last backup; it never panics, and never makes a
// fresh database in the damaged one's place. check says what is wrong and exits 1 too.
func TestDamagedDatabaseRefusedWithOneLine(t *testing.T) {
	bin := awardeeBinary(t)
	for name, content := range damagedFiles(t) {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, engine.DatabaseFile)
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			out, code := runBinary(t, bin, "serve", "--addr", "127.0.0.1:0", "--data", dir)
			if code != 1 {
				t.Fatalf("serve exited %d, want 1:\n%s", code, out)
			}
			assertNoPanic(t, out)
			line := strings.TrimSpace(out)
			if strings.Contains(line, "\n") {
				t.Errorf("serve said more than one line:\n%s", out)
			}
			for _, want := range []string{path, "damaged", "awardee check --data " + dir, "backup"} {
				if !strings.Contains(line, want) {
					t.Errorf("serve's line lacks %q: %s", want, line)
				}
			}
			after, err := os.ReadFile(path)
			if err != nil || string(after) != string(content) {
				t.Fatalf("serve changed the damaged file (%d bytes, now %d; %v)", len(content), len(after), err)
			}

			out, code = runBinary(t, bin, "check", "--data", dir)
			if code != 1 {
				t.Fatalf("check exited %d, want 1:\n%s", code, out)
			}
			assertNoPanic(t, out)
			if !strings.Contains(out, "damaged") && !strings.Contains(out, "bbolt") {
				t.Errorf("check does not say what is wrong:\n%s", out)
			}
		})
	}
}

// TestCheckCommandSaysOK: check on a sound database prints ok and exits 0, so the failures
// above are about the damage, not about check.
func TestCheckCommandSaysOK(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, engine.DatabaseFile), soundDatabase(t), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runBinary(t, awardeeBinary(t), "check", "--data", dir)
	if code != 0 || strings.TrimSpace(out) != "ok" {
		t.Fatalf("check on a sound database: exit %d:\n%s", code, out)
	}
	if _, code := runBinary(t, awardeeBinary(t), "check", "--data", t.TempDir()); code != 1 {
		t.Fatalf("check on a directory without a database exited %d, want 1", code)
	}
}

// runBinary runs the built binary to its end (within 20 s) and returns its combined output
// and exit code.
func runBinary(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exitErr) && exitErr.ExitCode() >= 0:
		return string(out), exitErr.ExitCode()
	default:
		t.Fatalf("%v: %v\n%s", args, err, out)
		return "", -1
	}
}

func assertNoPanic(t *testing.T, out string) {
	t.Helper()
	for _, bad := range []string{"panic", "goroutine"} {
		if strings.Contains(out, bad) {
			t.Fatalf("output mentions %q:\n%s", bad, out)
		}
	}
}
