package blobs

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"testing"
)

// fixture is an image generated in the test, with the size its header must report.
type fixture struct {
	name, mime, ext string
	width, height   int
	body            []byte
}

func testImage(w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.NRGBA{uint8(40 * x), uint8(60 * y), 200, 255})
		}
	}
	return img
}

func pngBytes(t testing.TB, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, testImage(w, h)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func fixtures(t testing.TB) []fixture {
	t.Helper()
	var jb, gb bytes.Buffer
	if err := jpeg.Encode(&jb, testImage(9, 4), nil); err != nil {
		t.Fatal(err)
	}
	if err := gif.Encode(&gb, testImage(6, 3), nil); err != nil {
		t.Fatal(err)
	}
	return []fixture{
		{"png", "image/png", "png", 7, 5, pngBytes(t, 7, 5)},
		{"jpeg", "image/jpeg", "jpg", 9, 4, jb.Bytes()},
		{"gif", "image/gif", "gif", 6, 3, gb.Bytes()},
		{"webp", "image/webp", "webp", 3, 2, webpBytes(3, 2, color.NRGBA{R: 10, G: 20, B: 30, A: 255})},
	}
}

// webpBytes encodes a one-colour lossless WebP (VP8L): no transforms, no colour cache, and five
// single-symbol prefix codes, so every pixel costs zero bits. The standard library cannot
// encode WebP; the test decodes the result in full to prove it is valid.
func webpBytes(w, h int, c color.NRGBA) []byte {
	var bw lsbWriter
	bw.write(0x2f, 8)
	bw.write(uint64(w-1), 14)
	bw.write(uint64(h-1), 14)
	bw.write(0, 1) // alpha unused
	bw.write(0, 3) // version 0
	bw.write(0, 1) // no transform
	bw.write(0, 1) // no colour cache
	bw.write(0, 1) // no meta prefix codes
	for _, sym := range []uint8{c.G, c.R, c.B, c.A} {
		bw.write(1, 1) // simple code
		bw.write(0, 1) // one symbol
		bw.write(1, 1) // 8-bit symbol
		bw.write(uint64(sym), 8)
	}
	bw.write(1, 1) // distance code: simple, one 1-bit symbol 0
	bw.write(0, 1)
	bw.write(0, 1)
	bw.write(0, 1)
	data := bw.flush()

	var out bytes.Buffer
	chunk := len(data) + len(data)%2
	out.WriteString("RIFF")
	_ = binary.Write(&out, binary.LittleEndian, uint32(4+8+chunk))
	out.WriteString("WEBPVP8L")
	_ = binary.Write(&out, binary.LittleEndian, uint32(len(data)))
	out.Write(data)
	if len(data)%2 == 1 {
		out.WriteByte(0)
	}
	return out.Bytes()
}

type lsbWriter struct {
	buf []byte
	acc uint64
	n   uint
}

func (w *lsbWriter) write(v uint64, bits uint) {
	w.acc |= v << w.n
	w.n += bits
	for w.n >= 8 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc >>= 8
		w.n -= 8
	}
}

func (w *lsbWriter) flush() []byte {
	if w.n > 0 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc, w.n = 0, 0
	}
	return w.buf
}

// pngHeaderClaiming returns a PNG whose IHDR claims w×h (with a correct CRC) followed by the
// rest of a real 1×1 image: enough for a header decode, nothing a full decode would accept.
func pngHeaderClaiming(t testing.TB, w, h uint32) []byte {
	t.Helper()
	b := pngBytes(t, 1, 1)
	// signature (8), length (4), "IHDR" (4), then width and height.
	binary.BigEndian.PutUint32(b[16:20], w)
	binary.BigEndian.PutUint32(b[20:24], h)
	binary.BigEndian.PutUint32(b[29:33], crc32.ChecksumIEEE(b[12:29]))
	return b
}

const (
	htmlPage = "<!doctype html><html><body>not an image</body></html>"
	svgImage = `<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>`
)
