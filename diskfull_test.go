package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
)

// mountTinyDisk mounts a tmpfs of size bytes for the test and unmounts it afterwards: a real
// file system that really fills up, as a disk does. It needs root, which CI has.
func mountTinyDisk(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a tmpfs: %v: %s", err, out)
		}
		t.Skipf("mounting a tmpfs needs root: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	return dir
}

// fillDisk writes a file until the file system is full and returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill the disk: %v", err)
			}
			return path
		}
	}
}

// A full disk: the failing write is a 503 that names neither the file nor the OS error and stores
// nothing; /healthz says 503 while writes cannot commit and 200 again once there is room; a
// keyed request that met the full disk runs afresh on retry (a 5xx is never stored).
func TestDiskFull(t *testing.T) {
	dir := mountTinyDisk(t, 16<<20)
	ts := newTestServer(t, func(c *Config) { c.Data = dir })
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	path := "/conversations/" + id + "/messages"
	mustStatus(t, ts.do(t, "GET", "/healthz", "", nil), 200)

	filler := fillDisk(t, dir)
	body := fmt.Sprintf(`{"text":%q}`, strings.Repeat("x", 30_000))
	accepted := 0
	var refused resp
	for range 1000 {
		r := ts.do(t, "POST", path, org.APIKey, body)
		if r.Status == 201 {
			accepted++
			continue
		}
		refused = r
		break
	}
	if refused.Status != 503 || refused.ErrorCode(t) != engine.CodeUnavailable {
		t.Fatalf("after %d posts on a full disk: status %d %s, want 503 unavailable", accepted, refused.Status, refused.Body)
	}
	for _, leak := range []string{dir, "awardee.db", "no space", "space left", "errno", "write "} {
		if strings.Contains(strings.ToLower(string(refused.Body)), strings.ToLower(leak)) {
			t.Errorf("the 503 leaks %q: %s", leak, refused.Body)
		}
	}
	health := ts.do(t, "GET", "/healthz", "", nil)
	if health.Status != 503 || health.ErrorCode(t) != engine.CodeUnavailable {
		t.Fatalf("/healthz on a full disk: %d %s, want 503 unavailable", health.Status, health.Body)
	}
	keyed := ts.do(t, "POST", path, org.APIKey, body, "Idempotency-Key", "full-disk")
	if keyed.Status != 503 {
		t.Fatalf("keyed post on a full disk: %d %s, want 503", keyed.Status, keyed.Body)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "/healthz to recover once the disk has room", func() bool {
		return ts.do(t, "GET", "/healthz", "", nil).Status == 200
	})
	retry := mustStatus(t, ts.do(t, "POST", path, org.APIKey, body, "Idempotency-Key", "full-disk"), 201)
	if retry.Header.Get("Idempotent-Replayed") != "" {
		t.Fatal("the retry of a request that met a full disk was a replay of the 503")
	}
	if n := len(ts.messages(t, org.APIKey, id)); n != accepted+1 {
		t.Fatalf("%d messages stored, want the %d accepted before the disk filled plus the retry", n, accepted+1)
	}
}
