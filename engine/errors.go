package engine

import (
	"errors"
	"fmt"
	"maps"
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
// contract, a sentence for humans and optional structured details, all of which may be shown to
// the client. Cause is what went wrong underneath (an OS error, a path, a stack): it is for the
// log only and never part of Message. Anything else that escapes the engine is an internal fault.
type Error struct {
	Code    string
	Message string
	Details map[string]any
	Cause   error
}

// Error is the client-facing text; the cause is reached through Unwrap, so logging the error
// with %v shows what a client sees and logging Cause shows the rest.
func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Unwrap exposes the cause to errors.Is and errors.As.
func (e *Error) Unwrap() error { return e.Cause }

// Errorf builds an *Error with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// WithDetails returns a copy of e with details attached. It never changes e, so package-level
// errors can be shared and decorated by any caller.
func (e *Error) WithDetails(details map[string]any) *Error {
	c := *e
	c.Details = maps.Clone(details)
	return &c
}

// WithCause returns a copy of e that records cause for the log.
func (e *Error) WithCause(cause error) *Error {
	c := *e
	c.Cause = cause
	return &c
}

// ErrorCode returns the contract code of err: its own for an *Error, internal_error otherwise.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// notFound is the error of every lookup that finds nothing, so that another org's object and a
// missing one are indistinguishable to the caller.
func notFound(what string) *Error {
	return Errorf(CodeNotFound, "%s not found", what)
}

var errLimit = Errorf(CodeValidation, "limit must be at least 1").WithDetails(map[string]any{"field": "limit"})
