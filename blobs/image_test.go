package blobs

import (
	"bytes"
	"image/color"
	"testing"

	"golang.org/x/image/webp"
)

func TestCheckImageAcceptsEachFormatWithItsSize(t *testing.T) {
	for _, f := range fixtures(t) {
		t.Run(f.name, func(t *testing.T) {
			info, err := CheckImage(bytes.NewReader(f.body))
			if err != nil {
				t.Fatalf("CheckImage: %v", err)
			}
			want := ImageInfo{MIME: f.mime, Ext: f.ext, Width: f.width, Height: f.height}
			if info != want {
				t.Fatalf("got %+v, want %+v", info, want)
			}
		})
	}
}

func TestWebPFixtureDecodesInFull(t *testing.T) {
	want := color.NRGBA{R: 10, G: 20, B: 30, A: 255}
	img, err := webp.Decode(bytes.NewReader(webpBytes(3, 2, want)))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 3 || b.Dy() != 2 {
		t.Fatalf("bounds %v", b)
	}
	if got := color.NRGBAModel.Convert(img.At(2, 1)).(color.NRGBA); got != want {
		t.Fatalf("pixel %v, want %v", got, want)
	}
}

func TestCheckImageRefusals(t *testing.T) {
	png := pngBytes(t, 7, 5)
	cases := []struct {
		name string
		body []byte
		want Reason
	}{
		{"html", []byte(htmlPage), ReasonNotImage},
		{"svg", []byte(svgImage), ReasonNotImage},
		{"empty", nil, ReasonNotImage},
		{"png magic only", png[:8], ReasonNotImage},
		{"png truncated header", png[:20], ReasonNotImage},
		{"riff that is not webp", append([]byte("RIFF\x10\x00\x00\x00WAVEfmt "), make([]byte, 16)...), ReasonNotImage},
		{"webp truncated", webpBytes(3, 2, color.NRGBA{A: 255})[:16], ReasonNotImage},
		{"jpeg magic then junk", append([]byte{0xFF, 0xD8, 0xFF}, bytes.Repeat([]byte{0x00}, 64)...), ReasonNotImage},
		{"gif magic only", []byte("GIF89a"), ReasonNotImage},
		{"zero width png", pngHeaderClaiming(t, 0, 10), ReasonNotImage},
		{"over 50 megapixels", pngHeaderClaiming(t, 10000, 5001), ReasonTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := CheckImage(bytes.NewReader(c.body))
			if got := ReasonOf(err); got != c.want {
				t.Fatalf("reason %q (%v), want %q", got, err, c.want)
			}
		})
	}
}

func TestCheckImageAcceptsExactly50Megapixels(t *testing.T) {
	info, err := CheckImage(bytes.NewReader(pngHeaderClaiming(t, 10000, 5000)))
	if err != nil {
		t.Fatalf("10000x5000 refused: %v", err)
	}
	if info.Width != 10000 || info.Height != 5000 {
		t.Fatalf("got %+v", info)
	}
}
