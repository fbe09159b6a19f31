package engine

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/awardee/awardee/internal/testkit"
)

// TestSweeperSurvivesADamagedPage zeroes the pages of an open database under it, as a failing
// disk would, and runs the maintenance sweeper: bbolt's assertion on the first bad page must be
// recovered, reported through OnError with its stack, and the next tick must run again.
func TestSweeperSurvivesADamagedPage(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{}) // not openDBAt: the check at the end would rightly fail
	if err != nil {
		t.Fatal(err)
	}
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	postAgent(t, db, org.OrgID, conv.ID, "hello")

	f, err := os.OpenFile(filepath.Join(dir, DatabaseFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	info, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	page := int64(os.Getpagesize())
	if _, err := f.WriteAt(make([]byte, info.Size()-2*page), 2*page); err != nil {
		t.Fatal(err)
	}
	f.Close()

	reports := make(chan error, 16)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		db.RunMaintenance(ctx, Maintenance{EventRetention: time.Hour, IdempotencyTTL: time.Hour, Every: time.Millisecond,
			OnError: func(what string, err error) {
				select {
				case reports <- err:
				default:
				}
			}})
	}()
	first := testkit.Recv(t, "the first sweep's report", reports)
	if !strings.Contains(first.Error(), "sweeper panicked") || !strings.Contains(first.Error(), "sweepEvery") {
		t.Fatalf("report %q, want the recovered panic with its stack", first)
	}
	testkit.Recv(t, "a second sweep after the panic", reports)
	cancel()
	testkit.Recv(t, "the sweeper to stop", stopped)
	db.Close()
}
