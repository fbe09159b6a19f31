//go:build linux

package blobs

import (
	"io/fs"
	"syscall"
)

// fileIdent is what changes whenever a file's bytes may have: its inode, size, mtime and ctime.
// Nothing in user space can set ctime back, so a rewrite that restores the mtime still shows.
type fileIdent struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

func identOf(fi fs.FileInfo) fileIdent {
	id := fileIdent{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.dev, id.ino = uint64(st.Dev), uint64(st.Ino)
		id.ctime = int64(st.Ctim.Sec)*1e9 + int64(st.Ctim.Nsec)
	}
	return id
}
