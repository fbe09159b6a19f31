//go:build awardee_nosync

package engine

// syncDisabled is set by the awardee_nosync build tag: commits skip fsync, and a crash of the
// machine can lose acknowledged writes. It exists only so the durability test can prove that
// it fails without fsync.
const syncDisabled = true
