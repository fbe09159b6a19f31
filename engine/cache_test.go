package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/awardee/awardee/internal/testkit"
)

// The commit loop's conversation cache must never hold what is not on disk. Each test stages a
// write that rolls back, or a change by another path, and then checks that the next post reads
// the conversation as stored: its seq follows the last stored one and its status rule judges the
// stored status.

// scribble is a unit that changes a conversation as a post would (seq, status) through the
// cache, then fails, so its batch rolls back.
func scribble(orgID, convID string, fail error) Unit {
	return func(tx *Tx) error {
		rec, err := tx.conversation(orgID, convID)
		if err != nil {
			return err
		}
		old := *rec
		rec.LastSeq += 100
		rec.Status = StatusResolved
		rec.LastActivityAt = tx.now
		if err := tx.putConversation(rec, &old); err != nil {
			return err
		}
		return fail
	}
}

// wantNextSeq posts an agent reply and checks it got seq want, and that the stored thread is
// 1…want with no gap.
func wantNextSeq(tb testing.TB, db *DB, orgID, convID string, want uint64) {
	tb.Helper()
	if m := postAgent(tb, db, orgID, convID, "next"); m.Seq != want {
		tb.Fatalf("post got seq %d, want %d: the cache kept a rolled-back write", m.Seq, want)
	}
	msgs := allMessages(tb, db, orgID, convID)
	if uint64(len(msgs)) != want || msgs[len(msgs)-1].Seq != want {
		tb.Fatalf("thread holds %d messages ending at seq %d, want 1…%d", len(msgs), msgs[len(msgs)-1].Seq, want)
	}
}

// TestCacheForgetsFailedUnit: a unit that wrote the conversation and then failed leaves nothing
// in the cache, alone in its batch.
func TestCacheForgetsFailedUnit(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	postAgent(t, db, org.OrgID, conv.ID, "first") // the conversation is now cached

	boom := errors.New("boom")
	if err := db.Update(context.Background(), scribble(org.OrgID, conv.ID, boom)); !errors.Is(err, boom) {
		t.Fatalf("failing unit: %v, want boom", err)
	}
	if c, err := db.Conversation(org.OrgID, conv.ID); err != nil || c.Status != StatusOpen {
		t.Fatalf("stored conversation after rollback: %+v, %v", c, err)
	}
	wantNextSeq(t, db, org.OrgID, conv.ID, 2)
}

// TestCacheForgetsPanickedUnit: the same for a unit that panics after its write.
func TestCacheForgetsPanickedUnit(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	postAgent(t, db, org.OrgID, conv.ID, "first")

	unit := scribble(org.OrgID, conv.ID, nil)
	err := db.Update(context.Background(), func(tx *Tx) error {
		if err := unit(tx); err != nil {
			return err
		}
		panic("a bug after the write")
	})
	wantCode(t, err, CodeInternal)
	wantNextSeq(t, db, org.OrgID, conv.ID, 2)
}

// TestCacheRerunOfBatch: in one batch a post writes the conversation and a later unit fails, so
// the batch runs again without it. The post's second run must read the conversation as stored,
// not as its own first run (or the failed unit) left it in the cache: it gets seq 2 once.
func TestCacheRerunOfBatch(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	postAgent(t, db, org.OrgID, conv.ID, "first")

	release := holdCommitLoop(t, db)
	boom := errors.New("boom")
	var posted Message
	results := submitCalls(t, db, []func() error{
		func() error {
			m, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, APIKeyID: "key_test", Text: "second"}, nil)
			posted = m
			return err
		},
		func() error { return db.Update(context.Background(), scribble(org.OrgID, conv.ID, boom)) },
	})
	release()
	if err := testkit.Recv(t, "the post", results[0]); err != nil {
		t.Fatalf("post: %v", err)
	}
	if err := testkit.Recv(t, "the failing unit", results[1]); !errors.Is(err, boom) {
		t.Fatalf("failing unit: %v, want boom", err)
	}
	if posted.Seq != 2 {
		t.Fatalf("post in the re-run batch got seq %d, want 2", posted.Seq)
	}
	wantNextSeq(t, db, org.OrgID, conv.ID, 3)
}

// TestCacheSeesPatch: a status change by PATCH is what the next post judges: an agent cannot
// reply to a conversation just resolved, and can again once it is reopened.
func TestCacheSeesPatch(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	postAgent(t, db, org.OrgID, conv.ID, "first")

	patchStatus(t, db, org.OrgID, conv.ID, StatusResolved)
	_, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, APIKeyID: "key_test", Text: "late"}, nil)
	wantCode(t, err, CodeInvalidState)

	patchStatus(t, db, org.OrgID, conv.ID, StatusOpen)
	wantNextSeq(t, db, org.OrgID, conv.ID, 2)
	if c, _ := db.Conversation(org.OrgID, conv.ID); c.Status != StatusOpen {
		t.Fatalf("status after reopen and reply: %s", c.Status)
	}
}

// TestCacheBounded: past its bound the cache drops entries, and a post to a dropped conversation
// reads it from the file again.
func TestCacheBounded(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	const limit, convs = 4, 12
	// The cache is the loop's: it is only ever touched from a unit.
	onLoop := func(fn func(c *convCache)) {
		t.Helper()
		if err := db.Update(context.Background(), func(*Tx) error { fn(db.commits.convs); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	onLoop(func(c *convCache) { c.limit = limit })
	ids := make([]string, convs)
	for i := range ids {
		ids[i] = newConv(t, db, org.OrgID, StatusOpen).ID
		postAgent(t, db, org.OrgID, ids[i], fmt.Sprint("first ", i))
		onLoop(func(c *convCache) {
			if len(c.committed) > limit {
				t.Errorf("cache holds %d conversations, bound %d", len(c.committed), limit)
			}
		})
	}
	for _, id := range ids {
		wantNextSeq(t, db, org.OrgID, id, 2)
	}
}

// TestCacheForgetsFailedCommit: a batch whose commit fails (a full disk, a real tmpfs) leaves
// nothing in the cache; once there is room the next post follows the last stored seq.
func TestCacheForgetsFailedCommit(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", dir).CombinedOutput(); err != nil {
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
	db := openDBAt(t, filepath.Join(dir, "data"))
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusOpen)
	postAgent(t, db, org.OrgID, conv.ID, "first")

	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for chunk := make([]byte, 64<<10); ; {
		if _, err := filler.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill the disk: %v", err)
			}
			break
		}
	}
	filler.Close()
	stored := uint64(1)
	in := NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, APIKeyID: "key_test", Text: strings.Repeat("x", 30_000)}
	for range 1000 {
		_, _, err := db.PostMessage(context.Background(), in, nil)
		if err != nil {
			wantCode(t, err, CodeUnavailable)
			break
		}
		stored++
	}
	if err := os.Remove(filler.Name()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "writes to commit again", func() bool { return db.WriteHealth(context.Background()) == nil })
	wantNextSeq(t, db, org.OrgID, conv.ID, stored+1)
}
