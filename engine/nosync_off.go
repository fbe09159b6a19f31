//go:build !awardee_nosync

package engine

// syncDisabled switches off bbolt's fsync at commit. Only the awardee_nosync build tag sets it,
// to prove that the durability test sees a missing fsync; no real build ever has it.
const syncDisabled = false
