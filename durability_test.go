package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/awardee/awardee/engine"
	"github.com/awardee/awardee/internal/testkit"
)

// A killed process loses nothing that reached the page cache, so kill -9 tests cannot see a
// missing fsync. These tests watch the system calls instead: every 201 must leave the server
// only after an fsync/fdatasync of the database file that completed after the request was read
// and after the last write to the file before the answer.

// durabilityPosts is how many posts, one at a time, the durability test makes.
const durabilityPosts = 50

func TestEvery201FollowsAnFsync(t *testing.T) {
	report := traceSequentialPosts(t, "")
	if len(report.violations) > 0 {
		t.Fatalf("%d of %d answers of 201 were sent before their write was fsync'd; first: %s",
			len(report.violations), report.responses, report.violations[0])
	}
	t.Logf("%d answers of 201, %d requests read, %d fsyncs of the database: every 201 after its fsync",
		report.responses, report.requests, report.syncs)
}

// TestDurabilityCheckSeesMissingFsync runs the same check against a build whose commits skip
// fsync (the awardee_nosync tag): the check must report the answers sent before their fsync, or
// it proves nothing.
func TestDurabilityCheckSeesMissingFsync(t *testing.T) {
	report := traceSequentialPosts(t, "awardee_nosync")
	if len(report.violations) < report.responses/2 {
		t.Fatalf("with fsync switched off, only %d of %d answers of 201 were reported", len(report.violations), report.responses)
	}
	t.Logf("with fsync off: %d of %d answers of 201 reported, e.g. %s", len(report.violations), report.responses, report.violations[0])
}

// requireStrace skips the test when strace is missing, except in CI, where that is a failure.
func requireStrace(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("strace")
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatal("strace is not installed; the durability test needs it (.ci/run installs it)")
	}
	t.Skip("strace is not installed: skipping the durability test (CI installs it)")
	return ""
}

// traceSequentialPosts serves a fresh data directory under strace with the binary built with
// tags, posts durabilityPosts messages one at a time, stops the server and checks the trace.
func traceSequentialPosts(t *testing.T, tags string) durabilityReport {
	t.Helper()
	strace := requireStrace(t)
	bin := awardeeBinaryTagged(t, tags)
	dir := t.TempDir()
	key := createOrgCLI(t, dir).APIKey
	tracePath := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command(strace, "-f", "-o", tracePath, "-ttt", "-y", "-s", "48",
		"-e", "trace=read,readv,recvfrom,write,writev,sendto,sendmsg,pwrite64,pwritev,fsync,fdatasync,sync_file_range",
		bin, "serve", "--addr", "127.0.0.1:0", "--data", dir)
	p := startCommand(t, cmd)
	server := childOf(t, p.cmd.Process.Pid)
	// strace leaves its tracee running when it dies, so the server needs its own stop.
	t.Cleanup(func() { syscall.Kill(server, syscall.SIGKILL) })

	convID, _ := p.newConversation(t, key, engine.StatusOpen)
	deadline := time.Now().Add(60 * time.Second)
	for i := range durabilityPosts {
		if time.Now().After(deadline) {
			t.Fatalf("only %d posts within 60 s", i)
		}
		mustStatus(t, p.do(t, "POST", "/conversations/"+convID+"/messages", key, fmt.Sprintf(`{"text":"durable %d"}`, i)), 201)
	}
	if err := syscall.Kill(server, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := testkit.Recv(t, "strace to end with the server", p.exited); err != nil {
		t.Fatalf("strace: %v\n%s", err, p.stderr)
	}

	f, err := os.Open(tracePath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	report, err := checkDurability(f, filepath.Join(dir, engine.DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	// 201s: the conversation and every post. Fewer seen means the parser missed some, and a
	// check that sees nothing would pass everything.
	if want := durabilityPosts + 1; report.responses != want || report.requests < want {
		t.Fatalf("the trace shows %d answers of 201 and %d requests read, want %d of each", report.responses, report.requests, want)
	}
	return report
}

// childOf finds the one child process of pid (the server strace launched).
func childOf(t *testing.T, pid int) int {
	t.Helper()
	var child int
	testkit.WaitFor(t, "strace's child process", func() bool {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			id, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			// The fields after the command name, which is in parentheses and may hold spaces.
			fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
			if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
				child = id
				return true
			}
		}
		return false
	})
	return child
}

// durabilityReport is what checkDurability found in a trace.
type durabilityReport struct {
	requests   int      // reads of a POST request from a socket
	responses  int      // writes of "HTTP/1.1 201" to a socket
	syncs      int      // completed fsyncs/fdatasyncs of the database file
	violations []string // 201s sent with no such fsync after their request and the last write
}

var (
	traceLine = regexp.MustCompile(`^(\d+)\s+(\d+\.\d+)\s+(.*)$`)
	resumed   = regexp.MustCompile(`^<\.\.\. (\w+) resumed>(.*)$`)
	callStart = regexp.MustCompile(`^(\w+)\((.*)$`)
	fdArg     = regexp.MustCompile(`^\d+<([^>]*)>`)
)

// checkDurability reads an `strace -f -ttt -y` trace. Lines are taken in the order strace wrote
// them, which respects causality across threads: a traced thread stops at each system call's
// entry and exit until strace has recorded it, so an fsync that had to return before an answer
// could be written is recorded before that write. A call split across threads' lines
// (`<unfinished ...>`, then `<... resumed>`) counts at its entry for a socket write (the answer
// leaves then at the earliest) and at its completion for a read and a file write. An fsync
// counts once completed, and covers what was written before it began: a 201 needs one that
// began after its request was read and after the last write to the file.
func checkDurability(r io.Reader, dbPath string) (durabilityReport, error) {
	type call struct {
		name, args string
		entered    int // line of the call's entry
	}
	var rep durabilityReport
	pending := map[string]call{} // thread id → call entered and not yet finished
	lastPost := map[string]int{} // socket → line of the completion of its last POST read
	lastPostAt := map[string]string{}
	// syncedFrom is the latest entry line of a completed fsync: every write to the file that
	// finished before it is on disk. lastWrite is the completion line of the last file write.
	syncedFrom, lastWrite := -1, -1
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 0; sc.Scan(); n++ {
		m := traceLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		tid, at, rest := m[1], m[2], m[3]
		var c call
		finished := true
		if rm := resumed.FindStringSubmatch(rest); rm != nil {
			entered, ok := pending[tid]
			if !ok || entered.name != rm[1] {
				continue // the entry was before the trace began
			}
			delete(pending, tid)
			c = call{name: rm[1], args: entered.args + rm[2], entered: entered.entered}
		} else if cm := callStart.FindStringSubmatch(rest); cm != nil {
			c = call{name: cm[1], args: cm[2], entered: n}
			if strings.HasSuffix(c.args, "<unfinished ...>") {
				c.args = strings.TrimSuffix(c.args, "<unfinished ...>")
				pending[tid] = c
				finished = false
			}
		} else {
			continue // a signal, an exit, strace's own notes
		}
		fd := ""
		if fm := fdArg.FindStringSubmatch(c.args); fm != nil {
			fd = fm[1]
		}
		socket := strings.HasPrefix(fd, "socket:") || strings.HasPrefix(fd, "TCP")
		// A socket write is judged at its entry, which is the line that carries its data.
		if socket && !strings.HasPrefix(rest, "<...") && isSocketWrite(c.name) && strings.Contains(c.args, `"HTTP/1.1 201 `) {
			rep.responses++
			post, read := lastPost[fd]
			switch {
			case !read:
				rep.violations = append(rep.violations, fmt.Sprintf("a 201 on %s at %s answers no request read", fd, at))
			case syncedFrom < post:
				rep.violations = append(rep.violations, fmt.Sprintf("201 on %s at %s: no fsync since its request was read at %s", fd, at, lastPostAt[fd]))
			case syncedFrom < lastWrite:
				rep.violations = append(rep.violations, fmt.Sprintf("201 on %s at %s: the database was written after the last fsync began", fd, at))
			}
		}
		if !finished {
			continue
		}
		ret, ok := returnValue(c.args)
		if !ok || ret < 0 {
			continue
		}
		switch {
		case socket && isSocketRead(c.name) && ret > 0 && strings.Contains(c.args, `"POST `):
			rep.requests++
			lastPost[fd], lastPostAt[fd] = n, at
		case fd == dbPath && (c.name == "fsync" || c.name == "fdatasync" || c.name == "sync_file_range"):
			rep.syncs++
			syncedFrom = max(syncedFrom, c.entered)
		case fd == dbPath && ret > 0 && (c.name == "pwrite64" || c.name == "pwritev" || c.name == "write" || c.name == "writev"):
			lastWrite = n
		}
	}
	return rep, sc.Err()
}

func isSocketRead(name string) bool {
	return name == "read" || name == "readv" || name == "recvfrom"
}

func isSocketWrite(name string) bool {
	return name == "write" || name == "writev" || name == "sendto" || name == "sendmsg"
}

// returnValue is the result strace printed after the call's arguments: the last " = ".
func returnValue(args string) (int64, bool) {
	i := strings.LastIndex(args, ") = ")
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(args[i+len(") = "):])
	if len(f) == 0 {
		return 0, false
	}
	v, err := strconv.ParseInt(f[0], 0, 64)
	return v, err == nil
}

// TestCheckDurabilityParsesInterleavedThreads feeds the checker hand-written traces in strace's
// format, including calls split across threads, so a change of its parsing that would make it
// blind is caught without running strace.
func TestCheckDurabilityParsesInterleavedThreads(t *testing.T) {
	const db = "/data/awardee.db"
	cases := []struct {
		name       string
		trace      string
		violations int
	}{
		{"fsync between read and answer", `
10 1.000001 read(7<socket:[42]>, "POST /conversations/x/messages HTTP/1.1\r\n"..., 4096) = 275
11 1.000002 pwrite64(5</data/awardee.db>, "\x02\x00"..., 4096, 8192) = 4096
11 1.000003 fdatasync(5</data/awardee.db>) = 0
10 1.000004 write(7<socket:[42]>, "HTTP/1.1 201 Created\r\nServer: awardee\r\n"..., 506) = 506
`, 0},
		{"calls split across lines, fsync finished before the answer", `
10 1.000001 read(7<socket:[42]>,  <unfinished ...>
11 1.000002 pwrite64(5</data/awardee.db>, "\x02"..., 4096, 8192 <unfinished ...>
10 1.000003 <... read resumed>"POST /conversations/x/messages HTTP/1.1\r\n"..., 4096) = 275
11 1.000004 <... pwrite64 resumed>) = 4096
12 1.000005 fdatasync(5</data/awardee.db> <unfinished ...>
11 1.000006 read(9<socket:[43]>, 0xc000200000, 4096) = -1 EAGAIN (Resource temporarily unavailable)
12 1.000007 <... fdatasync resumed>) = 0
10 1.000008 write(7<socket:[42]>, "HTTP/1.1 201 Created\r\n"..., 506 <unfinished ...>
10 1.000009 <... write resumed>) = 506
`, 0},
		{"an fsync that began before the last write", `
10 1.000001 read(7<socket:[42]>, "POST /conversations/x/messages HTTP/1.1\r\n"..., 4096) = 275
12 1.000002 fdatasync(5</data/awardee.db> <unfinished ...>
11 1.000003 pwrite64(5</data/awardee.db>, "\x02"..., 4096, 8192) = 4096
12 1.000004 <... fdatasync resumed>) = 0
10 1.000005 write(7<socket:[42]>, "HTTP/1.1 201 Created\r\n"..., 506) = 506
`, 1},
		{"no fsync at all", `
10 1.000001 read(7<socket:[42]>, "POST /conversations/x/messages HTTP/1.1\r\n"..., 4096) = 275
11 1.000002 pwrite64(5</data/awardee.db>, "\x02"..., 4096, 8192) = 4096
10 1.000003 write(7<socket:[42]>, "HTTP/1.1 201 Created\r\n"..., 506) = 506
`, 1},
		{"fsync still running when the answer leaves", `
10 1.000001 read(7<socket:[42]>, "POST /conversations/x/messages HTTP/1.1\r\n"..., 4096) = 275
11 1.000002 pwrite64(5</data/awardee.db>, "\x02"..., 4096, 8192) = 4096
11 1.000003 fdatasync(5</data/awardee.db> <unfinished ...>
10 1.000004 write(7<socket:[42]>, "HTTP/1.1 201 Created\r\n"..., 506 <unfinished ...>
11 1.000005 <... fdatasync resumed>) = 0
10 1.000006 <... write resumed>) = 506
`, 1},
		{"only an fsync from before the request", `
11 1.000001 fdatasync(5</data/awardee.db>) = 0
10 1.000002 read(7<socket:[42]>, "POST /conversations/x/messages HTTP/1.1\r\n"..., 4096) = 275
10 1.000003 write(7<socket:[42]>, "HTTP/1.1 201 Created\r\n"..., 506) = 506
`, 1},
		{"a write to the file after the last fsync", `
10 1.000001 read(7<socket:[42]>, "POST /conversations/x/messages HTTP/1.1\r\n"..., 4096) = 275
11 1.000002 fsync(5</data/awardee.db>) = 0
11 1.000003 pwrite64(5</data/awardee.db>, "\x02"..., 4096, 8192) = 4096
10 1.000004 write(7<socket:[42]>, "HTTP/1.1 201 Created\r\n"..., 506) = 506
`, 1},
		{"another file's fsync and a failed read do not count", `
10 1.000001 read(7<socket:[42]>, "POST /conversations/x/messages HTTP/1.1\r\n"..., 4096) = 275
11 1.000002 fdatasync(6</data/other.db>) = 0
10 1.000003 read(7<socket:[42]>, 0xc000100000, 4096) = -1 EAGAIN (Resource temporarily unavailable)
10 1.000004 write(7<socket:[42]>, "HTTP/1.1 201 Created\r\n"..., 506) = 506
`, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := checkDurability(strings.NewReader(tc.trace), db)
			if err != nil {
				t.Fatal(err)
			}
			if rep.responses != 1 || rep.requests != 1 {
				t.Fatalf("parsed %d answers and %d requests, want 1 of each", rep.responses, rep.requests)
			}
			if len(rep.violations) != tc.violations {
				t.Fatalf("violations %q, want %d", rep.violations, tc.violations)
			}
		})
	}
}
