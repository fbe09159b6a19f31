package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestFootprintReportsEveryFigure runs the tool on the real binary with a small load and checks
// that each figure is there and not zero; the figures themselves are measured, never asserted.
func TestFootprintReportsEveryFigure(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("reads memory from /proc")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "awardee")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/awardee/awardee").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	big := filepath.Join(dir, "big")
	if out, err := exec.Command(bin, "org", "create", "--data", big, "--name", "big").CombinedOutput(); err != nil {
		t.Fatalf("org create: %v\n%s", err, out)
	}
	var out strings.Builder
	// Not as root's cold runs: dropping the page cache would slow everyone else's tests.
	if err := run(config{binary: bin, big: big, posts: 40, writers: 4, runs: 1, textSize: 20, warmOnly: true}, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		`binary size +[1-9][0-9.]* MB`,
		`idle RSS +[1-9][0-9.]* MiB`,
		`RSS after 40 posts [1-9][0-9.]* MiB`,
		`start-up, warm cache +best [1-9][0-9.]*[µm]?s, median [1-9][0-9.]*[µm]?s of 1`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("no line matches %q in:\n%s", want, out.String())
		}
	}
}
