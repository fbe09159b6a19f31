package load

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net"
	"net/http"
	"strconv"
	"time"
)

// fixtureImages is how many distinct images the attachments mix cycles through: the server
// stores each once and then, for every later post, fetches, hashes and finds it stored, which is
// the common case of a screenshot shared again.
const fixtureImages = 16

// fixtureServer serves the attachments mix's images on 127.0.0.1; the server under load must be
// allowed to fetch from private networks (--allow-private-networks) to reach it.
type fixtureServer struct {
	base string
	srv  *http.Server
}

func startFixtures() (*fixtureServer, error) {
	images := make([][]byte, fixtureImages)
	for i := range images {
		img := image.NewRGBA(image.Rect(0, 0, 64, 48))
		for p := 0; p < len(img.Pix); p += 4 {
			img.Pix[p], img.Pix[p+1], img.Pix[p+2], img.Pix[p+3] = byte(i*16), byte(p), byte(255-i*16), 255
		}
		img.Set(0, 0, color.RGBA{R: byte(i), A: 255})
		var b bytes.Buffer
		if err := png.Encode(&b, img); err != nil {
			return nil, err
		}
		images[i] = b.Bytes()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /img/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.PathValue("n"))
		if err != nil || n < 0 || n >= len(images) {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(images[n])
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("the fixture server for attachments: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return &fixtureServer{base: "http://" + ln.Addr().String(), srv: srv}, nil
}

// imageURL is post n's attachment.
func (f *fixtureServer) imageURL(n int64) string {
	return f.base + "/img/" + strconv.FormatInt(n%fixtureImages, 10)
}

func (f *fixtureServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = f.srv.Shutdown(ctx)
}
