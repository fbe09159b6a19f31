package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
	bolt "go.etcd.io/bbolt"
)

// TestMain removes the binaries that awardeeBinary built, if any.
func TestMain(m *testing.M) {
	code := m.Run()
	builds.mu.Lock()
	for _, b := range builds.byTags {
		if b.path != "" {
			os.RemoveAll(filepath.Dir(b.path))
		}
	}
	builds.mu.Unlock()
	os.Exit(code)
}

// builds holds the binaries compiled by this test run, one per set of build tags.
var builds struct {
	mu     sync.Mutex
	byTags map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// awardeeBinary compiles the real awardee binary once per test run.
func awardeeBinary(t *testing.T) string {
	t.Helper()
	return awardeeBinaryTagged(t, "")
}

// awardeeBinaryTagged compiles the binary with the given build tags (comma-separated), once per
// test run and set of tags.
func awardeeBinaryTagged(t *testing.T, tags string) string {
	t.Helper()
	builds.mu.Lock()
	if builds.byTags == nil {
		builds.byTags = map[string]*build{}
	}
	b := builds.byTags[tags]
	if b == nil {
		b = &build{}
		builds.byTags[tags] = b
	}
	builds.mu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "awardee-bin")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, "awardee")
		out, err := exec.Command("go", "build", "-tags", tags, "-o", b.path, ".").CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build -tags %q: %v: %s", tags, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// process is the built binary serving a data directory, as an operator runs it, and a client
// of its API.
type process struct {
	*apiClient
	cmd    *exec.Cmd
	stdout *lockedBuffer
	stderr *lockedBuffer
	exited chan error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var listenLine = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startProcess runs `awardee serve` on a free loopback port and waits until it listens.
func startProcess(t *testing.T, dataDir string) *process {
	t.Helper()
	return startCommand(t, exec.Command(awardeeBinary(t), "serve", "--addr", "127.0.0.1:0", "--data", dataDir))
}

// startCommand starts cmd, which runs `awardee serve` (directly, or under a launcher such as
// strace), and waits until the server logs its address. The test's end kills it if it still runs.
func startCommand(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, exited: make(chan error, 1)}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = p.stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(p.stderr, line)
			if m := listenLine.FindStringSubmatch(line); m != nil {
				addr <- m[1]
			}
		}
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case a := <-addr:
		p.apiClient = newAPIClient("http://" + a)
	case err := <-p.exited:
		t.Fatalf("server exited before listening: %v\n%s", err, p.stderr)
	case <-time.After(20 * time.Second):
		t.Fatalf("server did not listen within 20 s:\n%s", p.stderr)
	}
	return p
}

// stopUnderLoad posts from many clients into one conversation of the built binary, stops the
// server with sig once 300 posts are acknowledged, restarts it on the same data directory and
// checks that every message that got a 201 is there, with seqs 1..n: a 2xx means fsync'd.
func stopUnderLoad(t *testing.T, sig syscall.Signal) *process {
	dir := t.TempDir()
	// An org whose rate window the load never meets, made with the CLI as an operator would.
	key := createOrgCLI(t, dir).APIKey
	p := startProcess(t, dir)
	convID, _ := p.newConversation(t, key, engine.StatusOpen)

	const posters, maxPerPoster = 16, 400
	var mu sync.Mutex
	acked := map[string]bool{}
	refused := map[int]int{} // statuses other than 201
	undecoded := 0           // 201s whose body is not a message: a failure, counted off the test's goroutine
	enough := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for w := range posters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range maxPerPoster {
				r, err := p.try("POST", "/conversations/"+convID+"/messages", key, fmt.Sprintf(`{"text":"w%d-%d"}`, w, i))
				if err != nil {
					return // the server is gone
				}
				if r.Status != 201 {
					mu.Lock()
					refused[r.Status]++
					mu.Unlock()
					continue
				}
				var msg engine.Message
				if err := json.Unmarshal(r.Body, &msg); err != nil || msg.ID == "" {
					mu.Lock()
					undecoded++
					mu.Unlock()
					continue
				}
				mu.Lock()
				acked[msg.ID] = true
				if len(acked) >= 300 {
					once.Do(func() { close(enough) })
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-enough:
	case <-time.After(60 * time.Second):
		t.Fatal("fewer than 300 messages acknowledged within 60 s")
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	var exitErr error
	select {
	case exitErr = <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("the server did not exit within 30 s of %v", sig)
	}
	testkit.WaitAll(t, "the posters to stop", &wg)
	if undecoded > 0 {
		t.Errorf("%d answers of 201 were not a message", undecoded)
	}
	if sig == syscall.SIGTERM {
		if exitErr != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", exitErr, p.stderr)
		}
		// A drain finishes what it accepted: no request may be answered 503 "shutting down".
		mu.Lock()
		if len(refused) > 0 {
			t.Errorf("requests refused during the drain: %v", refused)
		}
		mu.Unlock()
	}

	p2 := startProcess(t, dir)
	stored := p2.messages(t, key, convID)
	have := map[string]bool{}
	for i, msg := range stored {
		have[msg.ID] = true
		if msg.Seq != uint64(i+1) {
			t.Fatalf("message %d has seq %d: seqs must be 1..n with no gap", i, msg.Seq)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for id := range acked {
		if !have[id] {
			t.Errorf("acknowledged message %s lost after %v and restart", id, sig)
		}
	}
	t.Logf("%d acknowledged, %d stored after %v and restart", len(acked), len(stored), sig)
	return p
}

func TestKillNineLosesNoAcknowledgedMessage(t *testing.T) {
	stopUnderLoad(t, syscall.SIGKILL)
}

// TestSIGTERMDrainsUnderLoad is the operator's stop in the middle of traffic: exit status 0, a
// clean close in the log, nothing acknowledged lost.
func TestSIGTERMDrainsUnderLoad(t *testing.T) {
	p := stopUnderLoad(t, syscall.SIGTERM)
	if !strings.Contains(p.stderr.String(), "stopped cleanly") {
		t.Fatalf("no clean stop in the log:\n%s", p.stderr)
	}
}

// TestSecondStartKeepsTheDefaultOrg: only an empty data directory gets a new default org.
func TestSecondStartKeepsTheDefaultOrg(t *testing.T) {
	dir := t.TempDir()
	p := startProcess(t, dir)
	// stdout has its own pipe: it may reach the buffer after the listening line did.
	testkit.WaitFor(t, "the default org's keys on stdout", func() bool {
		return strings.Contains(p.stdout.String(), "API key:    ak_") && strings.Contains(p.stdout.String(), "widget key: wk_")
	})
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-p.exited; err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	p2 := startProcess(t, dir)
	p2.cmd.Process.Signal(syscall.SIGTERM)
	<-p2.exited // stdout is complete once the process is gone
	if strings.Contains(p2.stdout.String(), "API key") {
		t.Fatal("a second start on the same data directory created the default org again")
	}
}

// TestOfflineCommandRefusesWhileServing: a one-shot command on a served data directory fails
// fast with a message that says why.
func TestOfflineCommandRefusesWhileServing(t *testing.T) {
	ts := newTestServer(t)
	for _, args := range [][]string{
		{"org", "create", "--data", ts.dir, "--name", "x"},
		{"key", "create", "--data", ts.dir, "--org", "org_01M899DMSHP81E40S97M25T4G2"},
		{"backup", "--data", ts.dir, filepath.Join(t.TempDir(), "b.db")},
		{"check", "--data", ts.dir},
	} {
		start := time.Now()
		err := run(args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "in use by another process") {
			t.Fatalf("%v: got %v, want a clear 'in use' error", args, err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("%v took %s to refuse; the contract allows 2 s", args, took)
		}
	}
}

// TestOfflineCommands runs org create, key create, org update and backup on a stopped data
// directory (which org create creates), and serves the backup.
func TestOfflineCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fresh")
	var out bytes.Buffer
	if err := run([]string{"org", "create", "--data", dir, "--name", "acme", "--rate", "7", "--burst", "9", "--initial-status", "bot_active"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	var org engine.CreatedOrg
	if err := json.Unmarshal(out.Bytes(), &org); err != nil || !strings.HasPrefix(org.APIKey, "ak_") || !strings.HasPrefix(org.WidgetKey, "wk_") || !engine.ValidID(engine.PrefixOrg, org.OrgID) {
		t.Fatalf("org create printed %q (%v)", out.String(), err)
	}
	out.Reset()
	if err := run([]string{"key", "create", "--data", dir, "--org", org.OrgID, "--name", "ci"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	var key engine.CreatedKey
	if err := json.Unmarshal(out.Bytes(), &key); err != nil || !strings.HasPrefix(key.APIKey, "ak_") || !engine.ValidID(engine.PrefixKey, key.KeyID) {
		t.Fatalf("key create printed %q (%v)", out.String(), err)
	}
	if err := run([]string{"key", "create", "--data", dir, "--org", "org_01M899DMSHP81E40S97M25T4G2"}, io.Discard, io.Discard); engine.ErrorCode(err) != engine.CodeNotFound {
		t.Fatalf("key create for a missing org: %v", err)
	}
	out.Reset()
	if err := run([]string{"org", "update", "--data", dir, "--org", org.OrgID, "--rate", "3"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	var updated engine.Org
	if err := json.Unmarshal(out.Bytes(), &updated); err != nil {
		t.Fatalf("org update printed %q: %v", out.String(), err)
	}
	if updated.Rate != 3 || updated.Burst != 9 {
		t.Fatalf("org update: rate %v burst %d, want 3 and 9 (untouched)", updated.Rate, updated.Burst)
	}
	archive := filepath.Join(t.TempDir(), "copy", "backup.tar")
	if err := run([]string{"backup", "--data", dir, archive}, io.Discard, io.Discard); err == nil {
		t.Fatal("backup into a missing directory should fail")
	}
	os.MkdirAll(filepath.Dir(archive), 0o700)
	if err := run([]string{"backup", "--data", dir, archive}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(t.TempDir(), "restored")
	if err := run([]string{"restore", "--data", backup, archive}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	// The restored copy is a working data directory of its own: the second key authenticates there.
	cfg := defaultConfig()
	cfg.Data = backup
	ts := startTestServer(t, cfg)
	r := mustStatus(t, ts.do(t, "POST", "/conversations", key.APIKey, nil), 201)
	if status := r.JSON(t)["conversation"].(map[string]any)["status"]; status != "bot_active" {
		t.Fatalf("initial status %v, want bot_active", status)
	}
}

// TestEnvironmentBindsFlags: every serve flag reads AWARDEE_<FLAG>, and a flag given on the
// command line wins.
func TestEnvironmentBindsFlags(t *testing.T) {
	t.Setenv("AWARDEE_ADDR", "127.0.0.1:9999")
	t.Setenv("AWARDEE_IDEMPOTENCY_TTL", "90m")
	t.Setenv("AWARDEE_ALLOW_PRIVATE_NETWORKS", "true")
	t.Setenv("AWARDEE_DATA", "/from/env")
	cfg := defaultConfig()
	fs := newServeFlagSet(&cfg)
	if err := parseWithEnv(fs, []string{"--data", "/from/flag"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "127.0.0.1:9999" || cfg.IdempotencyTTL != 90*time.Minute || !cfg.AllowPrivateNetworks || cfg.Data != "/from/flag" {
		t.Fatalf("config %+v", cfg)
	}
	t.Setenv("AWARDEE_EVENT_RETENTION", "soon")
	if err := parseWithEnv(newServeFlagSet(&cfg), nil); err == nil || !strings.Contains(err.Error(), "AWARDEE_EVENT_RETENTION") {
		t.Fatalf("a bad env value should name its variable, got %v", err)
	}
}

// TestRestartKeepsEverything stops a server and starts another on the same directory.
func TestRestartKeepsEverything(t *testing.T) {
	ts := newTestServer(t)
	org := ts.newOrg(t, 0, 0)
	id := ts.conversationIn(t, org.APIKey, engine.StatusAgentRequested)
	mustStatus(t, ts.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"before restart"}`, "Idempotency-Key", "k1"), 201)
	before := ts.do(t, "GET", "/conversations/"+id+"/messages", org.APIKey, nil).Body
	beforeEvents := ts.do(t, "GET", "/events", org.APIKey, nil).Body
	ts.stop(t)

	cfg := defaultConfig()
	cfg.Data = ts.dir
	ts2 := startTestServer(t, cfg)
	if after := ts2.do(t, "GET", "/conversations/"+id+"/messages", org.APIKey, nil).Body; !bytes.Equal(before, after) {
		t.Fatalf("messages changed across restart:\n%s\n%s", before, after)
	}
	if after := ts2.do(t, "GET", "/events", org.APIKey, nil).Body; !bytes.Equal(beforeEvents, after) {
		t.Fatalf("events changed across restart")
	}
	r := mustStatus(t, ts2.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"before restart"}`, "Idempotency-Key", "k1"), 201)
	if r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatal("an idempotency key was forgotten across restart")
	}
	r = mustStatus(t, ts2.do(t, "POST", "/conversations/"+id+"/messages", org.APIKey, `{"text":"after"}`), 201)
	if seq := r.JSON(t)["seq"]; seq != float64(3) {
		t.Fatalf("seq after restart %v, want 3", seq)
	}
	evs := ts2.events(t, org.APIKey)
	if last := evs[len(evs)-1]; last.Offset != uint64(len(evs)) {
		t.Fatalf("offsets after restart do not continue: last %d of %d", last.Offset, len(evs))
	}

}

// createOrgCLI makes an org with a wide rate window through the built binary's org create.
func createOrgCLI(t *testing.T, dir string) engine.CreatedOrg {
	t.Helper()
	out, err := exec.Command(awardeeBinary(t), "org", "create", "--data", dir, "--name", "load", "--rate", "1000000", "--burst", "1000000").Output()
	if err != nil {
		t.Fatalf("org create: %v", err)
	}
	var org engine.CreatedOrg
	if err := json.Unmarshal(out, &org); err != nil {
		t.Fatalf("org create printed %q: %v", out, err)
	}
	return org
}

// The first release's data directory serves under this build after its migration, and the log
// says it migrated; an older build's refusal of a newer file has its own exit status.
func TestServeMigratesAnOlderDataDirectory(t *testing.T) {
	dir := t.TempDir()
	raw, err := os.ReadFile("testdata/schema-v1/awardee.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, engine.DatabaseFile), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, dir)
	mustStatus(t, p.do(t, "GET", "/healthz", "", nil), 200)
	log := p.stderr.String()
	line, _, _ := strings.Cut(log[strings.Index(log, "migrating the database")+1:], "\n")
	if !strings.Contains(log, "migrating the database") || !strings.Contains(line, "`awardee backup`") ||
		!strings.Contains(line, "from_schema=1") || !strings.Contains(line, "to_schema=2") ||
		strings.Index(log, "migrating the database") > strings.Index(log, "msg=listening") {
		t.Fatalf("no migration line naming awardee backup and both versions before the server listened:\n%s", log)
	}
	if strings.Contains(p.stdout.String(), "API key") {
		t.Fatal("a migrated directory got a new default org")
	}
}

// A file written by a newer build is refused with exit status 3 and a line saying what to do.
func TestServeRefusesANewerDataDirectory(t *testing.T) {
	dir := newerSchemaDir(t)
	out, err := exec.Command(awardeeBinary(t), "serve", "--addr", "127.0.0.1:0", "--data", dir).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitNewerSchema || !strings.Contains(string(out), "newer version of awardee") {
		t.Fatalf("serve on a newer file: %v\n%s", err, out)
	}
}

// One-shot commands never migrate: backup copies an older file as it is, and restore puts it back
// as it is (the way back to the binary that wrote it); the commands that write refuse it,
// pointing at serve.
func TestOfflineCommandsLeaveAnOlderFileAsItIs(t *testing.T) {
	dir := t.TempDir()
	original, err := os.ReadFile("testdata/schema-v1/awardee.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, engine.DatabaseFile), original, 0o600); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "backup.tar")
	if err := run([]string{"backup", "--data", dir, archive}, io.Discard, io.Discard); err != nil {
		t.Fatalf("backup of an older file: %v", err)
	}
	// Restoring checks a migrated scratch copy and leaves the restored file as it was written.
	restored := filepath.Join(t.TempDir(), "restored")
	if err := run([]string{"restore", "--data", restored, archive}, io.Discard, io.Discard); err != nil {
		t.Fatalf("restore of an older file: %v", err)
	}
	out := filepath.Join(restored, engine.DatabaseFile)
	err = run([]string{"key", "create", "--data", dir, "--org", "org_01M8S3HEMC05MQJ7NFQBCXNVM0"}, io.Discard, io.Discard)
	if !errors.Is(err, engine.ErrOlderSchema) {
		t.Fatalf("key create on an older file: %v, want ErrOlderSchema", err)
	}
	for _, path := range []string{filepath.Join(dir, engine.DatabaseFile), out} {
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		var version uint64
		db.View(func(tx *bolt.Tx) error {
			version = binary.BigEndian.Uint64(tx.Bucket([]byte("meta")).Get([]byte("schema")))
			return nil
		})
		db.Close()
		if version != 1 {
			t.Fatalf("%s is at schema %d after offline commands, want 1 as written", filepath.Base(path), version)
		}
	}
}

// check judges a file of an older schema by what it holds, not by today's layouts, and refuses a
// newer one with the exit status of a newer file, as serve does, rather than report its
// unfamiliar layout as damage.
func TestCheckKnowsOlderAndNewerSchemas(t *testing.T) {
	older := t.TempDir()
	original, err := os.ReadFile("testdata/schema-v1/awardee.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(older, engine.DatabaseFile), original, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := runBinary(t, awardeeBinary(t), "check", "--data", older); code != 0 || strings.TrimSpace(out) != "ok" {
		t.Fatalf("check of an older file: exit %d\n%s", code, out)
	}
	if kept, err := os.ReadFile(filepath.Join(older, engine.DatabaseFile)); err != nil || !bytes.Equal(kept, original) {
		t.Fatal("check changed an older file")
	}
	out, code := runBinary(t, awardeeBinary(t), "check", "--data", newerSchemaDir(t))
	if code != exitNewerSchema || !strings.Contains(out, "newer version of awardee") {
		t.Fatalf("check of a newer file: exit %d, want %d\n%s", code, exitNewerSchema, out)
	}
}

// newerSchemaDir makes a data directory whose database says it was written by a build of a later
// schema (99) than this one.
func newerSchemaDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	db, err := engine.Open(dir, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	b, err := bolt.Open(filepath.Join(dir, engine.DatabaseFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = b.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), binary.BigEndian.AppendUint64(nil, 99))
	})
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}
