package engine

// Status is a conversation's place in its lifecycle.
type Status string

const (
	StatusBotActive      Status = "bot_active"
	StatusAgentRequested Status = "agent_requested"
	StatusOpen           Status = "open"
	StatusResolved       Status = "resolved"
	StatusClosed         Status = "closed"
	StatusArchived       Status = "archived"
)

// Statuses lists every status in the contract's order; the order is also the byte used for each
// status in the activity index, so it must never be reordered, only appended to.
var Statuses = [...]Status{
	StatusBotActive, StatusAgentRequested, StatusOpen, StatusResolved, StatusClosed, StatusArchived,
}

// transitions is section 4's table, row = from, column = to, in the order of Statuses.
// The diagonal is false: a PATCH to the current status is a no-op, handled before the table.
var transitions = [len(Statuses)][len(Statuses)]bool{
	//               bot    agent  open   resol  closed archived
	/* bot_active */ {false, true, true, true, true, false},
	/* agent_req  */ {true, false, true, true, true, false},
	/* open       */ {true, true, false, true, true, false},
	/* resolved   */ {false, false, true, false, true, true},
	/* closed     */ {false, false, true, false, false, true},
	/* archived   */ {false, false, true, false, false, false},
}

func (s Status) index() int {
	for i, v := range Statuses {
		if v == s {
			return i
		}
	}
	return -1
}

// Valid reports whether s is one of the contract's statuses.
func (s Status) Valid() bool { return s.index() >= 0 }

// CanTransition reports whether section 4's table allows moving from one status to another.
func CanTransition(from, to Status) bool {
	f, t := from.index(), to.index()
	if f < 0 || t < 0 {
		return false
	}
	return transitions[f][t]
}

// Author is who writes a message; each author has its own rule for which statuses accept it.
type Author string

const (
	// AuthorAgent is the team replying through an API key (POST /conversations/{id}/messages).
	AuthorAgent Author = "agent"
	// AuthorBot is the org's bot answering a visitor (POST /conversations/{id}/bot-messages).
	AuthorBot Author = "bot"
	// AuthorVisitor is the visitor writing from the widget.
	AuthorVisitor Author = "visitor"
)

// MessagePlan is what posting a message by some author does to a conversation in some status.
type MessagePlan struct {
	Allowed  bool
	Takeover bool   // agent_requested → open with the "joined" system marker before the message
	NewState Status // status after the post; equal to the current one when nothing changes
}

// PlanMessage applies the seed's table (for agents), section 5's bot rule and its visitor rules.
// It is called once before any slow work and again inside the write transaction, so a status that
// changed in between is judged by the same rule.
func PlanMessage(author Author, current Status) MessagePlan {
	switch author {
	case AuthorAgent:
		switch current {
		case StatusOpen:
			return MessagePlan{Allowed: true, NewState: StatusOpen}
		case StatusAgentRequested:
			return MessagePlan{Allowed: true, Takeover: true, NewState: StatusOpen}
		}
	case AuthorBot:
		if current == StatusBotActive {
			return MessagePlan{Allowed: true, NewState: current}
		}
	case AuthorVisitor:
		switch current {
		case StatusBotActive, StatusAgentRequested, StatusOpen:
			return MessagePlan{Allowed: true, NewState: current}
		case StatusResolved:
			return MessagePlan{Allowed: true, NewState: StatusOpen}
		}
	}
	return MessagePlan{NewState: current}
}

// invalidForMessage is the error of a post that PlanMessage refuses.
func invalidForMessage(author Author, current Status) *Error {
	var hint string
	switch author {
	case AuthorAgent:
		hint = "replies need status open or agent_requested"
		if current == StatusBotActive {
			hint += "; PATCH the status to agent_requested or open first"
		} else {
			hint += "; PATCH the status back to open first"
		}
	case AuthorBot:
		hint = "bot messages need status bot_active"
	default:
		hint = "this conversation no longer accepts messages"
	}
	return Errorf(CodeInvalidState, "conversation is %s: %s", current, hint).
		WithDetails(map[string]any{"status": string(current)})
}

// PathTo is how a new conversation reaches status to through the API: the status to open it in
// (to itself when a conversation can be opened in it, else open) and the shortest sequence of
// statuses to PATCH it through from there, following the transitions table, to last. It
// answers ok false when to cannot be reached.
func PathTo(to Status) (create Status, patches []Status, ok bool) {
	if creatableStatus(to) {
		return to, nil, true
	}
	if !to.Valid() {
		return "", nil, false
	}
	// Breadth-first over the table, so the first path found is a shortest one; ties go to the
	// earlier status in Statuses.
	from := StatusOpen
	prev := map[Status]Status{from: from}
	queue := []Status{from}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if cur == to {
			for s := to; s != from; s = prev[s] {
				patches = append([]Status{s}, patches...)
			}
			return from, patches, true
		}
		for _, next := range Statuses {
			if _, seen := prev[next]; !seen && CanTransition(cur, next) {
				prev[next] = cur
				queue = append(queue, next)
			}
		}
	}
	return "", nil, false
}
