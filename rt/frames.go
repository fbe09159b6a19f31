package rt

import (
	"strconv"

	"github.com/awardee/awardee/engine"
	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// eventData holds the parts of an event's data that frames carry, as the engine encoded them.
type eventData struct {
	Message      jsontext.Value `json:"message"`
	Conversation jsontext.Value `json:"conversation"`
	Changes      jsontext.Value `json:"changes"`
}

// eventFrame renders an event as the frame of section 10. It is built once per event and shared,
// read-only, by every connection that receives it.
func eventFrame(ev engine.Event) ([]byte, bool) {
	var d eventData
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		return nil, false
	}
	b := make([]byte, 0, 96+len(ev.Data))
	switch ev.Type {
	case engine.EventMessageCreated:
		if d.Message == nil {
			return nil, false
		}
		conv, _ := json.Marshal(ev.ConversationID)
		b = append(b, `{"type":"new_message","offset":`...)
		b = strconv.AppendUint(b, ev.Offset, 10)
		b = append(b, `,"conversation_id":`...)
		b = append(b, conv...)
		b = append(b, `,"message":`...)
		b = append(b, d.Message...)
	case engine.EventConversationUpdated:
		if d.Conversation == nil {
			return nil, false
		}
		changes := d.Changes
		if changes == nil {
			changes = jsontext.Value(`{}`)
		}
		b = append(b, `{"type":"conversation.updated","offset":`...)
		b = strconv.AppendUint(b, ev.Offset, 10)
		b = append(b, `,"conversation":`...)
		b = append(b, d.Conversation...)
		b = append(b, `,"changes":`...)
		b = append(b, changes...)
	default:
		return nil, false
	}
	return append(b, '}'), true
}

func readyFrame(latest uint64) []byte {
	b := append([]byte(`{"type":"ready","offset":`), strconv.FormatUint(latest, 10)...)
	return append(b, '}')
}

// errorFrame is the contract's error as a frame: {"type":"error","code":…,"message":…}.
func errorFrame(code, message string) []byte {
	b, _ := json.Marshal(struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}{"error", code, message})
	return b
}
