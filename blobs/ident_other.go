//go:build !linux

package blobs

import "io/fs"

// fileIdent is what changes whenever a file's bytes may have; without inode and ctime, size
// and mtime have to do.
type fileIdent struct {
	size  int64
	mtime int64
}

func identOf(fi fs.FileInfo) fileIdent {
	return fileIdent{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}
