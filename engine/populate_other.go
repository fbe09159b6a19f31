//go:build !linux

package engine

// populateFlag is Linux's MAP_POPULATE; elsewhere pages are read as they are touched.
const populateFlag = 0
