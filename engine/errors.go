package engine

import (
	"errors"
	"fmt"
)

// Error codes of the contract. The HTTP layer maps each to exactly one status; the engine only
// ever speaks in these codes.
const (
	CodeValidation          = "validation_error"
	CodeInvalidState        = "invalid_state"
	CodeUnauthorized        = "unauthorized"
	CodeForbidden           = "forbidden"
	CodeNotFound            = "not_found"
	CodeMethodNotAllowed    = "method_not_allowed"
	CodeIdempotencyInUse    = "idempotency_key_in_use"
	CodePayloadTooLarge     = "payload_too_large"
	CodeInvalidPayload      = "invalid_payload"
	CodeIdempotencyMismatch = "idempotency_key_mismatch"
	CodeRateLimited         = "rate_limit_exceeded"
	CodeInternal            = "internal_error"
	CodeUnavailable         = "unavailable"
)

// Error is the one error type a caller of the engine needs to understand: a machine code from the
// contract, a sentence for humans and optional structured details. Anything else that escapes the
// engine is an internal fault.
type Error struct {
	Code    string
	Message string
	Details map[string]any
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an *Error with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// WithDetails returns e with details attached, for chaining at the point of creation.
func (e *Error) WithDetails(details map[string]any) *Error {
	e.Details = details
	return e
}

// ErrorCode returns the contract code of err: its own for an *Error, internal_error otherwise.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrNotFound is shared by every lookup so that another org's object and a missing one are
// indistinguishable to the caller.
func notFound(what string) *Error {
	return Errorf(CodeNotFound, "%s not found", what)
}

var errLimit = Errorf(CodeValidation, "limit must be at least 1").WithDetails(map[string]any{"field": "limit"})
