package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
)

// short is the start of a body for a failure message: a backup's body is a whole database.
func short(body []byte) string { return string(body[:min(len(body), 200)]) }

// firstOrgKey makes an API key of the server's first org (the one the first start created),
// the only org whose keys may take a backup of the whole server.
func firstOrgKey(t *testing.T, ts *testServer) (orgID, apiKey string) {
	t.Helper()
	orgs, err := ts.db.Orgs()
	if err != nil || len(orgs) == 0 {
		t.Fatalf("orgs: %v %v", orgs, err)
	}
	key, err := ts.db.CreateAPIKey(context.Background(), orgs[0].ID, "backup")
	if err != nil {
		t.Fatal(err)
	}
	return orgs[0].ID, key.APIKey
}

// fetchBackup takes a backup through GET /admin/backup and checks the response's headers.
func fetchBackup(t *testing.T, c *apiClient, key string) []byte {
	t.Helper()
	r := mustStatus(t, c.do(t, "GET", "/admin/backup", key, nil), 200)
	if ct := r.Header.Get("Content-Type"); ct != "application/x-tar" {
		t.Fatalf("Content-Type %q, want application/x-tar", ct)
	}
	day := time.Now().UTC().Format("20060102")
	if cd := r.Header.Get("Content-Disposition"); !strings.HasPrefix(cd, `attachment; filename="awardee-backup-`) || !strings.Contains(cd, day) || !strings.HasSuffix(cd, `.tar"`) {
		t.Fatalf("Content-Disposition %q, want a dated attachment name", cd)
	}
	return r.Body
}

// tarEntries lists an archive's names and sizes, failing the test when it does not read to its end.
func tarEntries(t *testing.T, archive []byte) map[string]int64 {
	t.Helper()
	entries := map[string]int64{}
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return entries
		}
		if err != nil {
			t.Fatalf("the backup does not read as a tar: %v", err)
		}
		entries[h.Name] = h.Size
	}
}

// restoreArchive runs `awardee restore` of archive into a new directory and returns it.
func restoreArchive(t *testing.T, archive []byte) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "backup.tar")
	if err := os.WriteFile(file, archive, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	var stdout, stderr bytes.Buffer
	if err := run([]string{"restore", "--data", dir, file}, &stdout, &stderr); err != nil {
		t.Fatalf("restore: %v\n%s", err, stderr.String())
	}
	return dir
}

type acked struct {
	conv, id string
	sent     time.Time // before the request was sent
	answered time.Time // after its 201 was read
}

// A backup taken through the API while posts keep coming restores a working server that holds
// every message acknowledged before the backup began, none sent after it ended, and every
// attachment's bytes.
func TestBackupUnderLoadRestoresEveryAcknowledgedMessage(t *testing.T) {
	src := newImageServer(t)
	ts := newTestServer(t, func(c *Config) { c.AllowPrivateNetworks = true })
	_, backupKey := firstOrgKey(t, ts)
	orgs := []testOrg{ts.newOrg(t, 0, 0), ts.newOrg(t, 0, 0)}
	var convs []struct{ key, id string }
	for _, org := range orgs {
		for range 3 {
			convs = append(convs, struct{ key, id string }{org.APIKey, ts.conversationIn(t, org.APIKey, engine.StatusOpen)})
		}
	}
	var files []engine.Attachment
	for i, path := range []string{"/a.png", "/c.gif", "/b.jpg"} {
		c := convs[i*2]
		msg := decodeMessage(t, mustStatus(t, ts.do(t, "POST", "/conversations/"+c.id+"/messages", c.key,
			fmt.Sprintf(`{"text":"picture","attachments":[{"url":%q}]}`, src.URL+path)), 201))
		files = append(files, msg.Attachments...)
	}

	const workers, perWorker = 6, 200
	var (
		mu      sync.Mutex
		done    []acked
		stop    atomic.Bool
		wg      sync.WaitGroup
		failure atomic.Value
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker && !stop.Load(); i++ {
				c := convs[(w+i)%len(convs)]
				sent := time.Now()
				r, err := ts.try("POST", "/conversations/"+c.id+"/messages", c.key, fmt.Sprintf(`{"text":"load %d/%d"}`, w, i))
				if err != nil || r.Status != 201 {
					failure.Store(fmt.Sprintf("post: %v %d %s", err, r.Status, r.Body))
					return
				}
				var m engine.Message
				if err := json.Unmarshal(r.Body, &m); err != nil {
					failure.Store(err.Error())
					return
				}
				mu.Lock()
				done = append(done, acked{conv: c.id, id: m.ID, sent: sent, answered: time.Now()})
				mu.Unlock()
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(done) }
	testkit.WaitFor(t, "posts acknowledged before the backup", func() bool { return count() >= 100 || failure.Load() != nil })
	began := time.Now()
	archive := fetchBackup(t, ts.apiClient, backupKey)
	ended := time.Now()
	atBackup := count()
	testkit.WaitFor(t, "posts sent after the backup", func() bool { return count() >= atBackup+30 || failure.Load() != nil })
	stop.Store(true)
	wg.Wait()
	if f := failure.Load(); f != nil {
		t.Fatal(f)
	}

	entries := tarEntries(t, archive)
	if _, ok := entries[engine.DatabaseFile]; !ok {
		t.Fatalf("the backup has no %s: %v", engine.DatabaseFile, entries)
	}
	for _, f := range files {
		name := "blobs/" + f.Hash[0:2] + "/" + f.Hash[2:4] + "/" + f.Hash
		if entries[name] != f.Size {
			t.Fatalf("the backup holds %s with %d bytes, want %d", name, entries[name], f.Size)
		}
	}

	cfg := defaultConfig()
	cfg.Data = restoreArchive(t, archive)
	restored := startTestServer(t, cfg)
	stored := map[string]bool{}
	for _, c := range convs {
		for _, m := range restored.messages(t, c.key, c.id) {
			stored[m.ID] = true
		}
	}
	var before, after int
	for _, a := range done {
		switch {
		case a.answered.Before(began):
			before++
			if !stored[a.id] {
				t.Errorf("message %s, acknowledged before the backup began, is not in the restored copy", a.id)
			}
		case a.sent.After(ended):
			after++
			if stored[a.id] {
				t.Errorf("message %s, sent after the backup ended, is in the restored copy", a.id)
			}
		}
	}
	if before < 100 || after < 30 {
		t.Fatalf("%d posts acknowledged before the backup and %d sent after it; the test needs 100 and 30", before, after)
	}
	for _, f := range files {
		path := f.FileURL[strings.Index(f.FileURL, "/files/"):]
		r := mustStatus(t, restored.do(t, "GET", path, "", nil), 200)
		if int64(len(r.Body)) != f.Size {
			t.Fatalf("%s serves %d bytes from the restored copy, want %d", path, len(r.Body), f.Size)
		}
	}
	t.Logf("%d posts before the backup, %d after; the backup is %d bytes", before, after, len(archive))
}

// Only the first org's API keys and admins take backups: a backup holds every org.
func TestBackupRefusesOtherPrincipals(t *testing.T) {
	ts := newTestServer(t)
	firstID, firstKey := firstOrgKey(t, ts)
	other := ts.newOrg(t, 0, 0)
	_, visitorToken := ts.newConversation(t, other.APIKey, engine.StatusOpen)
	admin := ts.newMember(t, firstID, "admin@example.com", engine.RoleAdmin)
	agent := ts.newMember(t, firstID, "agent@example.com", engine.RoleAgent)
	otherAdmin := ts.newMember(t, other.OrgID, "other@example.com", engine.RoleAdmin)

	for _, c := range []struct {
		name   string
		r      resp
		status int
		code   string
	}{
		{"no key", ts.do(t, "GET", "/admin/backup", "", nil), 401, engine.CodeUnauthorized},
		{"a widget key", ts.do(t, "GET", "/admin/backup", other.WidgetKey, nil), 403, engine.CodeForbidden},
		{"a visitor token", ts.do(t, "GET", "/admin/backup", visitorToken, nil), 403, engine.CodeForbidden},
		{"another org's API key", ts.do(t, "GET", "/admin/backup", other.APIKey, nil), 403, engine.CodeForbidden},
		{"an agent's session", ts.as(t, ts.signIn(t, agent.Member.Email, agent.Password), "GET", "/admin/backup", nil), 403, engine.CodeForbidden},
		{"another org's admin", ts.as(t, ts.signIn(t, otherAdmin.Member.Email, otherAdmin.Password), "GET", "/admin/backup", nil), 403, engine.CodeForbidden},
	} {
		if c.r.Status != c.status || c.r.ErrorCode(t) != c.code {
			t.Errorf("%s: %d %s, want %d %s", c.name, c.r.Status, short(c.r.Body), c.status, c.code)
		}
		if c.r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: Content-Type %q", c.name, c.r.Header.Get("Content-Type"))
		}
	}
	fetchBackup(t, ts.apiClient, firstKey)
	r := mustStatus(t, ts.as(t, ts.signIn(t, admin.Member.Email, admin.Password), "GET", "/admin/backup", nil), 200)
	if _, ok := tarEntries(t, r.Body)[engine.DatabaseFile]; !ok {
		t.Fatal("an admin's backup holds no database")
	}
}

// A client that stops reading holds neither the commit loop nor, past the stall timeout, the
// backup's slot: posts that grow the file past bbolt's memory map commit while the backup is
// stalled, a second backup is refused meanwhile, and one is taken again once the stalled
// client is cut off.
func TestStalledBackupBlocksNeitherCommitsNorTheNextBackup(t *testing.T) {
	ts := newTestServer(t)
	_, backupKey := firstOrgKey(t, ts)
	org := ts.newOrg(t, 0, 0)
	conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	big := fmt.Sprintf(`{"text":%q}`, strings.Repeat("x", engine.MaxTextLength))
	post := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		var failed atomic.Int64
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += 4 {
					if r, err := ts.try("POST", "/conversations/"+conv+"/messages", org.APIKey, big); err != nil || r.Status != 201 {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if failed.Load() > 0 {
			t.Fatalf("%d posts failed", failed.Load())
		}
	}
	post(180) // about 6 MB: more than the sockets between server and client hold (4 MB and more)
	size := func() (n int64) {
		if err := ts.db.Snapshot(func(s engine.Snapshot) error { n = s.Size(); return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	sizeBefore := size()

	const stall = 6 * time.Second // well beyond the posts below, on a busy machine too
	ts.backups.stall.Store(int64(stall))
	conn, err := dialSmallWindow(strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /admin/backup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", backupKey)
	testkit.WaitFor(t, "the stalled backup to start", ts.backups.running.Load)
	stalledAt := time.Now()

	r := ts.do(t, "GET", "/admin/backup", backupKey, nil)
	if r.Status != 503 || r.ErrorCode(t) != engine.CodeUnavailable || r.Header.Get("Retry-After") == "" {
		t.Fatalf("a second backup while one runs: %d %s (Retry-After %q), want 503 unavailable with Retry-After", r.Status, short(r.Body), r.Header.Get("Retry-After"))
	}
	// Doubling the file outgrows bbolt's memory map, which waits for every read transaction.
	post(200)
	t.Logf("posts during the stall %s", time.Since(stalledAt))
	if !ts.backups.running.Load() {
		t.Fatalf("the posts took %s: they waited for the stalled backup to be cut off", time.Since(stalledAt))
	}
	if size() < 2*sizeBefore {
		t.Fatalf("the file grew from %d to %d bytes only; the test needs it doubled", sizeBefore, size())
	}
	testkit.WaitFor(t, "the stalled backup to be cut off", func() bool { return !ts.backups.running.Load() })
	if cut := time.Since(stalledAt); cut < stall/2 {
		t.Fatalf("the stalled backup ended after %s, before the stall timeout of %s", cut, stall)
	}
	// What the stalled client got is a tar cut short: restore would refuse it.
	conn.SetReadDeadline(time.Now().Add(testkit.Timeout))
	partial, _ := http.ReadResponse(bufio.NewReader(conn), nil)
	if partial == nil || partial.StatusCode != 200 {
		t.Fatalf("the stalled client's response: %+v", partial)
	}
	if _, err := io.Copy(io.Discard, partial.Body); err == nil {
		t.Fatal("the stalled client read a whole response")
	}
	archive := fetchBackup(t, ts.apiClient, backupKey)
	if got := tarEntries(t, archive)[engine.DatabaseFile]; got < 2*sizeBefore {
		t.Fatalf("the next backup's database is %d bytes, want at least %d", got, 2*sizeBefore)
	}
}

// A backup made from a stopped data directory by `awardee backup` is the same format.
func TestBackupCommandWritesTheSameFormat(t *testing.T) {
	src := newImageServer(t)
	ts := newTestServer(t, func(c *Config) { c.AllowPrivateNetworks = true })
	org := ts.newOrg(t, 0, 0)
	conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	msg := decodeMessage(t, mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey,
		fmt.Sprintf(`{"text":"picture","attachments":[{"url":%q}]}`, src.URL+"/a.png")), 201))
	ts.stop(t)
	out := filepath.Join(t.TempDir(), "offline.tar")
	if err := run([]string{"backup", "--data", ts.dir, out}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	archive, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Attachments[0].Hash
	if entries := tarEntries(t, archive); len(entries) != 2 || entries["blobs/"+h[0:2]+"/"+h[2:4]+"/"+h] != msg.Attachments[0].Size {
		t.Fatalf("the offline backup holds %v", entries)
	}
	cfg := defaultConfig()
	cfg.Data = restoreArchive(t, archive)
	restored := startTestServer(t, cfg)
	if msgs := restored.messages(t, org.APIKey, conv); len(msgs) != 1 || msgs[0].ID != msg.ID {
		t.Fatalf("restored thread: %+v", msgs)
	}
}

// restoreRefusal runs restore of archive into dir and returns its error, which must leave no
// temporary directory beside dir.
func restoreRefusal(t *testing.T, dir string, archive []byte, extra ...string) error {
	t.Helper()
	file := filepath.Join(t.TempDir(), "backup.tar")
	if err := os.WriteFile(file, archive, 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(append(append([]string{"restore", "--data", dir}, extra...), file), io.Discard, io.Discard)
	if err == nil {
		t.Fatal("restore succeeded")
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	for _, e := range entries {
		if strings.Contains(e.Name(), ".restore-") || strings.Contains(e.Name(), "verify") {
			t.Fatalf("a refused restore left %s behind", e.Name())
		}
	}
	return err
}

func tarOf(t *testing.T, files map[string][]byte, order ...string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, name := range order {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(files[name])), Mode: 0o600}); err != nil {
			t.Fatal(err)
		}
		tw.Write(files[name])
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Restore refuses, changing nothing: a directory that holds anything (unless --force), one a
// server holds (even with --force), and an archive that is not a backup, is cut short, names a
// path of its own, holds a blob that is not what its name says, or a damaged database.
func TestRestoreRefusals(t *testing.T) {
	src := newImageServer(t)
	ts := newTestServer(t, func(c *Config) { c.AllowPrivateNetworks = true })
	_, backupKey := firstOrgKey(t, ts)
	org := ts.newOrg(t, 0, 0)
	conv := ts.conversationIn(t, org.APIKey, engine.StatusOpen)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+conv+"/messages", org.APIKey,
		fmt.Sprintf(`{"text":"picture","attachments":[{"url":%q}]}`, src.URL+"/a.png")), 201)
	good := fetchBackup(t, ts.apiClient, backupKey)
	parts := map[string][]byte{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(good))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		parts[h.Name], _ = io.ReadAll(tr)
		order = append(order, h.Name)
	}
	blobName := order[1]

	// A directory with anything in it needs --force, and then is replaced whole.
	full := filepath.Join(t.TempDir(), "full")
	os.MkdirAll(full, 0o700)
	os.WriteFile(filepath.Join(full, "notes.txt"), []byte("mine"), 0o600)
	if err := restoreRefusal(t, full, good); !strings.Contains(err.Error(), "not empty") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("restore into a non-empty directory: %v", err)
	}
	if kept, err := os.ReadFile(filepath.Join(full, "notes.txt")); err != nil || string(kept) != "mine" {
		t.Fatal("a refused restore changed the directory")
	}
	file := filepath.Join(t.TempDir(), "good.tar")
	os.WriteFile(file, good, 0o600)
	if err := run([]string{"restore", "--data", full, file, "--force"}, io.Discard, io.Discard); err != nil {
		t.Fatalf("restore --force: %v", err)
	}
	if _, err := os.Stat(filepath.Join(full, "notes.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("restore --force kept what the directory held")
	}
	if _, err := os.Stat(filepath.Join(full, filepath.FromSlash(blobName))); err != nil {
		t.Fatalf("restore --force did not restore the blob: %v", err)
	}
	if err := restoreRefusal(t, ts.dir, good, "--force"); !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("restore --force onto a served directory: %v", err)
	}

	damagedDB := bytes.Clone(parts[engine.DatabaseFile])
	for i := 2 * os.Getpagesize(); i < len(damagedDB); i += 97 {
		damagedDB[i] ^= 0xff
	}
	wrongBlob := bytes.Clone(parts[blobName])
	wrongBlob[len(wrongBlob)/2] ^= 1
	for _, c := range []struct {
		name    string
		archive []byte
		want    string
	}{
		{"random bytes", bytes.Repeat([]byte("not a tar "), 300), "not an awardee backup"},
		{"an archive cut short", good[:len(good)/2], "cut short"},
		{"an archive cut between entries", good[:512+len(parts[engine.DatabaseFile])], "cut short"},
		{"an entry outside the format", tarOf(t, map[string][]byte{engine.DatabaseFile: parts[engine.DatabaseFile], "../escape": []byte("x")}, engine.DatabaseFile, "../escape"), "unexpected entry"},
		{"no database", tarOf(t, map[string][]byte{blobName: parts[blobName]}, blobName), "holds no awardee.db"},
		{"a blob that is not its name", tarOf(t, map[string][]byte{engine.DatabaseFile: parts[engine.DatabaseFile], blobName: wrongBlob}, engine.DatabaseFile, blobName), "does not hash to its name"},
		{"a damaged database", tarOf(t, map[string][]byte{engine.DatabaseFile: damagedDB}, engine.DatabaseFile), "damaged"},
	} {
		target := filepath.Join(t.TempDir(), "new")
		err := restoreRefusal(t, target, c.archive)
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if _, statErr := os.Stat(target); !errors.Is(statErr, os.ErrNotExist) {
			t.Errorf("%s: the refused restore made %s", c.name, target)
		}
	}
}

// A backup of a newer schema is refused by restore through the binary with the exit status of
// a newer file (3), and nothing is restored.
func TestRestoreRefusesANewerBackupWithItsExitStatus(t *testing.T) {
	dir := newerSchemaDir(t)
	archive := filepath.Join(t.TempDir(), "newer.tar")
	if err := run([]string{"backup", "--data", dir, archive}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "restored")
	out, err := exec.Command(awardeeBinary(t), "restore", "--data", target, archive).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitNewerSchema || !strings.Contains(string(out), "newer version of awardee") {
		t.Fatalf("restore of a newer backup: %v\n%s", err, out)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a refused restore made its directory")
	}
}

// TestRestoreRefusesASparseEntry restores a 10 KiB archive that GNU tar wrote for a 1 GiB file
// of holes: archive/tar expands it as a regular file, so restore must notice that the entry
// yields more than the archive holds before it fills the disk with zeros.
func TestRestoreRefusesASparseEntry(t *testing.T) {
	gnuTar, err := exec.LookPath("tar")
	if err != nil {
		t.Fatalf("this test builds its archive with GNU tar, which every Debian system has: %v", err)
	}
	work := t.TempDir()
	holes, err := os.Create(filepath.Join(work, engine.DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := holes.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	holes.Close()
	archive := filepath.Join(t.TempDir(), "sparse.tar")
	cmd := exec.Command(gnuTar, "--sparse", "--sparse-version=1.0", "--format=pax", "-C", work, "-cf", archive, engine.DatabaseFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	raw, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) > 1<<20 {
		t.Fatalf("tar wrote %d bytes: it did not make a sparse entry", len(raw))
	}
	target := filepath.Join(t.TempDir(), "restored")
	err = restoreRefusal(t, target, raw)
	if !strings.Contains(err.Error(), "sparse") {
		t.Fatalf("restore of a sparse entry: %v", err)
	}
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused restore made %s: %v", target, err)
	}
}
