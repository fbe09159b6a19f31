package engine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestBackupFileLeavesNoTemporaryCopy: a backup into an existing directory is refused before
// anything is written (it used to leave a full copy as OUT.tmp), a failed one leaves nothing,
// and a good one leaves exactly OUT, a sound database, even when it replaces an older copy.
func TestBackupFileLeavesNoTemporaryCopy(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	postAgent(t, db, org.OrgID, newConv(t, db, org.OrgID, StatusOpen).ID, "kept in the copy")

	parent := t.TempDir()
	out := filepath.Join(parent, "existing")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	err := db.BackupFile(out)
	if err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Fatalf("backup onto a directory: %v, want a clear error", err)
	}
	if names := dirEntries(t, parent); len(names) != 1 || names[0] != "existing" {
		t.Fatalf("after the refused backup, %s holds %v", parent, names)
	}
	if names := dirEntries(t, out); len(names) != 0 {
		t.Fatalf("after the refused backup, %s holds %v", out, names)
	}

	if err := db.BackupFile(filepath.Join(parent, "missing", "copy.db")); err == nil {
		t.Fatal("backup into a missing directory succeeded")
	}

	copyDir := t.TempDir()
	copyPath := filepath.Join(copyDir, DatabaseFile)
	for range 2 { // the second replaces the first
		if err := db.BackupFile(copyPath); err != nil {
			t.Fatal(err)
		}
		if names := dirEntries(t, copyDir); len(names) != 1 || names[0] != DatabaseFile {
			t.Fatalf("after the backup, %s holds %v", copyDir, names)
		}
	}
	if problems, err := CheckDir(copyDir, time.Second); err != nil || len(problems) > 0 {
		t.Fatalf("the copy: %v %v", problems, err)
	}
}
