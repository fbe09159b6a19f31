package ceiling

import (
	"encoding/json"
	"path/filepath"
	"sync"
	"testing"

	"github.com/valyala/fasthttp"
	bolt "go.etcd.io/bbolt"
)

func postJSON(t *testing.T, client *fasthttp.Client, uri string, body string) (int, []byte) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod("POST")
	req.SetRequestURI(uri)
	req.SetBodyString(body)
	if err := client.Do(req, resp); err != nil {
		t.Error(err)
		return 0, nil
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...)
}

// TestReferencesStoreWhatTheyAcknowledge posts into each reference server from several clients
// and checks every answer is a 201 and, after stop, that the file holds the rows of every post.
func TestReferencesStoreWhatTheyAcknowledge(t *testing.T) {
	const convs, perConv = 4, 25
	for _, ref := range References {
		t.Run(ref.Name, func(t *testing.T) {
			dir := t.TempDir()
			url, stop, err := ref.Start(dir)
			if err != nil {
				t.Fatal(err)
			}
			client := &fasthttp.Client{}
			ids := make([]string, convs)
			for i := range ids {
				status, body := postJSON(t, client, url+"/conversations", `{"status":"open"}`)
				var out struct {
					Conversation struct{ ID string } `json:"conversation"`
				}
				if status != 201 || json.Unmarshal(body, &out) != nil || len(out.Conversation.ID) != len("conv_")+26 {
					t.Fatalf("open: %d %s", status, body)
				}
				ids[i] = out.Conversation.ID
			}
			var wg sync.WaitGroup
			for _, id := range ids {
				wg.Go(func() {
					for range perConv {
						if status, body := postJSON(t, client, url+"/conversations/"+id+"/messages", `{"text":"hello"}`); status != 201 {
							t.Errorf("post: %d %s", status, body)
						}
					}
				})
			}
			wg.Wait()
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if ref.Name == "no-write" {
				return
			}
			db, err := bolt.Open(filepath.Join(dir, ref.Name+".db"), 0o600, &bolt.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			err = db.View(func(tx *bolt.Tx) error {
				count := func(b *bolt.Bucket) int { return b.Stats().KeyN }
				if ref.Name == "one-row" {
					if n := count(tx.Bucket([]byte("rows"))); n != convs*perConv {
						t.Errorf("rows %d, want %d", n, convs*perConv)
					}
					return nil
				}
				want := map[string]int{"msgs": convs * perConv, "convs": convs, "activity": 2 * convs}
				for name, n := range want {
					if got := count(tx.Bucket([]byte(name))); got != n {
						t.Errorf("%s: %d keys, want %d", name, got, n)
					}
				}
				if n := count(tx.Bucket(bucketEvents).Bucket(orgID)); n != convs*perConv {
					t.Errorf("events %d, want %d", n, convs*perConv)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
