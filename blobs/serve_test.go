package blobs

import "testing"

func TestByteRange(t *testing.T) {
	const size = 100
	cases := []struct {
		header      string
		first, last int64
		ok          bool
	}{
		{"", -1, -1, true},
		{"bytes=0-9", 0, 9, true},
		{"bytes=90-", 90, 99, true},
		{"bytes=90-500", 90, 99, true},
		{"bytes=-10", 90, 99, true},
		{"bytes=-500", 0, 99, true},
		{"bytes=100-", -1, -1, false},
		{"bytes=-0", -1, -1, false},
		{"bytes=0-1,5-6", -1, -1, true}, // several ranges: ignored, the whole file
		{"items=0-5", -1, -1, true},     // another unit: ignored
		{"bytes=abc", -1, -1, true},
		{"bytes=9-3", -1, -1, true},
		{"bytes=-", -1, -1, true},
	}
	for _, c := range cases {
		first, last, ok := byteRange([]byte(c.header), size)
		if first != c.first || last != c.last || ok != c.ok {
			t.Errorf("Range %q = %d, %d, %v; want %d, %d, %v", c.header, first, last, ok, c.first, c.last, c.ok)
		}
	}
}
