package main

import (
	"errors"
	json "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"log/slog"

	"github.com/awardee/awardee/engine"
	"github.com/valyala/fasthttp"
)

// statusOf is the one table from a contract code to an HTTP status.
var statusOf = map[string]int{
	engine.CodeValidation:          fasthttp.StatusBadRequest,
	engine.CodeInvalidState:        fasthttp.StatusBadRequest,
	engine.CodeUnauthorized:        fasthttp.StatusUnauthorized,
	engine.CodeForbidden:           fasthttp.StatusForbidden,
	engine.CodeNotFound:            fasthttp.StatusNotFound,
	engine.CodeMethodNotAllowed:    fasthttp.StatusMethodNotAllowed,
	engine.CodeIdempotencyInUse:    fasthttp.StatusConflict,
	engine.CodePayloadTooLarge:     fasthttp.StatusRequestEntityTooLarge,
	engine.CodeInvalidPayload:      fasthttp.StatusUnprocessableEntity,
	engine.CodeIdempotencyMismatch: fasthttp.StatusUnprocessableEntity,
	engine.CodeRateLimited:         fasthttp.StatusTooManyRequests,
	engine.CodeInternal:            fasthttp.StatusInternalServerError,
	engine.CodeUnavailable:         fasthttp.StatusServiceUnavailable,
	codeRequestTimeout:             fasthttp.StatusRequestTimeout,
	codeURITooLong:                 fasthttp.StatusRequestURITooLong,
	codeHeadersTooLarge:            fasthttp.StatusRequestHeaderFieldsTooLarge,
}

type errorBody struct {
	Error errorFields `json:"error"`
}

type errorFields struct {
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details,omitempty"`
}

// renderError turns any error into its status and the contract's envelope. Only an
// *engine.Error's code, message and details reach the client; its cause (an OS error, a path, a
// stack) goes to the log with the request id. Any other error is a fault: logged in full, shown
// only as "Internal error."
func renderError(err error, log *slog.Logger, requestID string) (int, []byte) {
	var e *engine.Error
	if !errors.As(err, &e) {
		log.Error("internal error", "request_id", requestID, "err", err)
		e = &engine.Error{Code: engine.CodeInternal, Message: "Internal error."}
	} else if e.Code == engine.CodeInternal || e.Code == engine.CodeUnavailable {
		log.Error(e.Message, "request_id", requestID, "code", e.Code, "cause", e.Cause)
	} else if e.Cause != nil {
		// A client's mistake with a cause worth keeping (an attachment URL that did not answer,
		// say) is the client's to fix: kept for whoever looks, but no alarm for the operator.
		log.Warn(e.Message, "request_id", requestID, "code", e.Code, "cause", e.Cause)
	}
	status, ok := statusOf[e.Code]
	if !ok {
		status = fasthttp.StatusInternalServerError
	}
	// Messages and details may quote what the client sent (a path, a URL), which need not be
	// valid UTF-8: such bytes are rendered as U+FFFD rather than failing the answer.
	body, mErr := json.Marshal(errorBody{Error: errorFields{Code: e.Code, Message: e.Message, Details: e.Details}}, jsontext.AllowInvalidUTF8(true))
	if mErr != nil {
		log.Error("error envelope not encodable", "request_id", requestID, "err", mErr)
		body = []byte(`{"error":{"code":"internal_error","message":"Internal error."}}`)
		status = fasthttp.StatusInternalServerError
	}
	return status, body
}
