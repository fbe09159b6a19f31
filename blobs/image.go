package blobs

import (
	"bytes"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"

	"golang.org/x/image/webp"
)

// MaxPixels is the largest image accepted: 50 megapixels.
const MaxPixels = 50_000_000

// ImageInfo is what the header of an accepted image says.
type ImageInfo struct {
	MIME   string // image/png, image/jpeg, image/gif or image/webp
	Ext    string // png, jpg, gif or webp
	Width  int
	Height int
}

type imageFormat struct {
	mime, ext    string
	magic        func([]byte) bool
	decodeConfig func(io.Reader) (image.Config, error)
}

// formats are the only types accepted, each recognised by its magic number and then by a
// successful decode of its header with that format's own decoder.
var formats = []imageFormat{
	{"image/png", "png", func(b []byte) bool { return bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) }, png.DecodeConfig},
	{"image/jpeg", "jpg", func(b []byte) bool { return bytes.HasPrefix(b, []byte{0xFF, 0xD8, 0xFF}) }, jpeg.DecodeConfig},
	{"image/gif", "gif", func(b []byte) bool {
		return bytes.HasPrefix(b, []byte("GIF87a")) || bytes.HasPrefix(b, []byte("GIF89a"))
	}, gif.DecodeConfig},
	{"image/webp", "webp", func(b []byte) bool {
		return len(b) >= 12 && bytes.Equal(b[0:4], []byte("RIFF")) && bytes.Equal(b[8:12], []byte("WEBP"))
	}, webp.DecodeConfig},
}

// CheckImage decides from the bytes alone (never from a Content-Type someone claims) whether r
// holds a PNG, JPEG, GIF or WebP image: a magic number, then a decode of the header that yields
// the dimensions. It reads only as far as the header. Anything else (HTML, SVG, a truncated or
// broken header, a zero dimension) is an *Error with ReasonNotImage; more than MaxPixels is
// ReasonTooLarge.
func CheckImage(r io.Reader) (ImageInfo, error) {
	head := make([]byte, 12)
	n, _ := io.ReadFull(r, head)
	head = head[:n]
	for _, f := range formats {
		if !f.magic(head) {
			continue
		}
		cfg, err := f.decodeConfig(io.MultiReader(bytes.NewReader(head), r))
		if err != nil {
			return ImageInfo{}, &Error{Reason: ReasonNotImage, Message: "the attachment is not a readable " + f.ext + " image", Cause: err}
		}
		if cfg.Width <= 0 || cfg.Height <= 0 {
			return ImageInfo{}, &Error{Reason: ReasonNotImage, Message: "the attachment has no pixels", Cause: fmt.Errorf("%dx%d", cfg.Width, cfg.Height)}
		}
		if int64(cfg.Width)*int64(cfg.Height) > MaxPixels {
			return ImageInfo{}, &Error{Reason: ReasonTooLarge, Message: "the image is larger than 50 megapixels", Cause: fmt.Errorf("%dx%d", cfg.Width, cfg.Height)}
		}
		return ImageInfo{MIME: f.mime, Ext: f.ext, Width: cfg.Width, Height: cfg.Height}, nil
	}
	return ImageInfo{}, &Error{Reason: ReasonNotImage, Message: "the attachment is not a PNG, JPEG, GIF or WebP image", Cause: fmt.Errorf("leading bytes %q", head)}
}
