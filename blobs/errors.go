package blobs

import "errors"

// Reason says why an attachment was refused, in the words of the contract's
// details.reason.
type Reason string

// The reasons of the contract; no other value is ever put in an Error.
const (
	ReasonScheme      Reason = "scheme"
	ReasonUnsafeHost  Reason = "unsafe_host"
	ReasonFetchFailed Reason = "fetch_failed"
	ReasonTimeout     Reason = "timeout"
	ReasonTooLarge    Reason = "too_large"
	ReasonNotImage    Reason = "not_image"
)

const (
	msgScheme     = "the URL must be an absolute http or https URL"
	msgUnsafeHost = "the URL points at a private, loopback or otherwise unsafe host"
)

// Error is a refusal the client may see: a Reason from the contract, the URL as the client gave
// it and a sentence that names no internals (no resolved address, no local path, no OS error).
// Cause is what happened underneath, for the log only; Unwrap reaches it.
type Error struct {
	Reason  Reason
	URL     string
	Message string
	Cause   error
}

// Error is the client-facing text only.
func (e *Error) Error() string { return string(e.Reason) + ": " + e.Message }

// Unwrap returns the cause, for errors.Is and the log.
func (e *Error) Unwrap() error { return e.Cause }

// ReasonOf returns the Reason of the first *Error in err's chain, or "" when err is not a
// refusal (a local storage fault, for instance).
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// Store errors, matched with errors.Is.
var (
	// ErrNotFound: no blob with this hash is stored.
	ErrNotFound = errors.New("blobs: not found")
	// ErrCorrupt: the stored bytes no longer hash to their name. The blob is left in place for
	// inspection and is never served; a later put of the right bytes replaces it.
	ErrCorrupt = errors.New("blobs: stored blob is corrupt")
	// ErrRecentlyCommitted: Delete refused a blob committed within the store's grace period,
	// because a message that references it may be about to commit.
	ErrRecentlyCommitted = errors.New("blobs: blob committed recently")
	// ErrDone: the pending put was already committed or discarded.
	ErrDone = errors.New("blobs: pending put already finished")
)
