package engine

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

func testAttachment(n int, size int64) Attachment {
	return Attachment{Hash: fmt.Sprintf("%064x", n), MimeType: "image/png", Size: size, Width: 2, Height: 3, FileURL: fmt.Sprintf("http://files/%d.png", n)}
}

// The library holds each distinct image once per org, written by the message's own unit: the
// same image in two conversations is one asset billed once; another org has none of it.
func TestAssetsAreRecordedOncePerOrg(t *testing.T) {
	db := openTestDB(t)
	org, other := newTestOrg(t, db), newTestOrg(t, db)
	a, b := newConv(t, db, org.OrgID, StatusOpen), newConv(t, db, org.OrgID, StatusOpen)
	shot, logo := testAttachment(1, 1000), testAttachment(2, 500)
	for _, post := range []struct {
		conv string
		atts []Attachment
	}{{a.ID, []Attachment{shot}}, {b.ID, []Attachment{shot, logo}}, {b.ID, []Attachment{logo}}} {
		if _, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: post.conv, Author: AuthorAgent, Attachments: post.atts}, nil); err != nil {
			t.Fatal(err)
		}
	}
	usage, err := db.Usage(org.OrgID)
	if err != nil || usage != (Usage{AssetBytes: 1500, AssetCount: 2}) {
		t.Fatalf("usage = %+v (%v), want 2 assets of 1500 bytes in all", usage, err)
	}
	got, err := db.Asset(org.OrgID, shot.Hash)
	if err != nil || got.Size != 1000 || got.MimeType != "image/png" || got.FileURL != shot.FileURL {
		t.Fatalf("asset = %+v (%v)", got, err)
	}
	_, err = db.Asset(other.OrgID, shot.Hash)
	wantCode(t, err, CodeNotFound)
	if u, _ := db.Usage(other.OrgID); u != (Usage{}) {
		t.Fatalf("the other org is billed %+v", u)
	}
	page, more, err := db.ListAssets(org.OrgID, nil, 1)
	if err != nil || len(page) != 1 || !more || page[0].Hash != shot.Hash {
		t.Fatalf("first page = %+v more %v (%v)", page, more, err)
	}
	page, more, err = db.ListAssets(org.OrgID, mustHex(t, page[0].Hash), 1)
	if err != nil || len(page) != 1 || more || page[0].Hash != logo.Hash {
		t.Fatalf("second page = %+v more %v (%v)", page, more, err)
	}
	for _, h := range []string{shot.Hash, logo.Hash} {
		if ok, err := db.BlobReferenced(h); err != nil || !ok {
			t.Fatalf("blob %s not referenced (%v)", h, err)
		}
	}
	if ok, _ := db.BlobReferenced(testAttachment(3, 1).Hash); ok {
		t.Fatal("a blob no message used is referenced")
	}
}

// A refused post records no asset: the library is written by the message's unit or not at all.
func TestRefusedPostRecordsNoAsset(t *testing.T) {
	db := openTestDB(t)
	org := newTestOrg(t, db)
	conv := newConv(t, db, org.OrgID, StatusResolved)
	_, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorAgent, Attachments: []Attachment{testAttachment(1, 10)}}, nil)
	wantCode(t, err, CodeInvalidState)
	if u, _ := db.Usage(org.OrgID); u != (Usage{}) {
		t.Fatalf("a refused post billed %+v", u)
	}
	if ok, _ := db.BlobReferenced(testAttachment(1, 10).Hash); ok {
		t.Fatal("a refused post referenced its blob")
	}
	if _, _, err := db.PostMessage(context.Background(), NewMessage{OrgID: org.OrgID, ConversationID: conv.ID, Author: AuthorVisitor, Attachments: []Attachment{{Hash: strings.Repeat("z", 64)}}}, nil); ErrorCode(err) != CodeInternal {
		t.Fatalf("a malformed hash was accepted: %v", err)
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
