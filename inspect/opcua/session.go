package opcua

import (
	"github.com/conduit-ot/conduit/inspect"
	"github.com/gopcua/opcua/id"
)

// MaxSessions bounds the sessions a Sessions tracks. Beyond it the session
// activated first is forgotten and its requests carry no session: fail
// closed, a policy that names users denies them. A client with this many
// sessions on one connection is broken or hostile.
const MaxSessions = 64

// Sessions tracks which session, and so which identity, the requests of one
// connection run in (Part 4 §5.6): the single definition the proxy and
// capture replay share.
//
// An ActivateSession request names its session by the AuthenticationToken
// of its RequestHeader and carries the identity it asks for (the
// Operation's OPCUA.Session, filled by DecodeRequest). Once the server
// answers it with a Good ActivateSessionResponse, later requests with the
// same AuthenticationToken run in that session: Attach gives their
// Operation its identity. A Good CloseSessionResponse ends it. Tokens are
// compared as they are encoded: the same NodeId encoded another way names
// no session (fail closed: its requests carry no identity).
//
// Per request that decoded without error (not opaque): Attach before the
// policy decides; SessionChangeOf when it is sent on, the change kept with
// the request until its response; Response with the header of the
// response paired with it. Requests that did not decode take no part.
//
// The zero value is ready to use. A Sessions is not safe for concurrent
// use; the identities it attaches are never modified once stored and may
// be read from any goroutine.
type Sessions struct {
	byToken map[string]*inspect.OPCUASession
	order   []string // the tokens of byToken, oldest activation first
}

// SessionChange is what a request asks of the sessions, settled by its
// response: activate a session with an identity (ActivateSession) or end
// one (CloseSession). The zero value, for every other request, changes
// nothing.
type SessionChange struct {
	activate *inspect.OPCUASession // ActivateSession: the identity asked for (a copy)
	closes   bool                  // CloseSession
	token    string                // the session's AuthenticationToken, as encoded
}

// IsZero reports a change that does nothing: no response can change the
// sessions, and the response need not be decoded for them.
func (c SessionChange) IsZero() bool { return c.activate == nil && !c.closes }

// Attach gives op the identity of the session its AuthenticationToken
// names, if an earlier ActivateSession established it. op and info are
// those of a request that decoded without error. An operation that
// already has a session (an ActivateSession: the identity it asks for) or
// names none (a null token) is left as it is.
func (s *Sessions) Attach(op *inspect.Operation, info *RequestInfo) {
	if op.OPCUA == nil || op.OPCUA.Session != nil || !info.HasAuthToken {
		return
	}
	if sess := s.byToken[string(info.AuthToken)]; sess != nil {
		op.OPCUA.Session = sess
	}
}

// SessionChangeOf returns what the request decoded into op and info
// (without error) asks of the sessions: for an ActivateSession, the
// identity it asks for and its token; for a CloseSession, the token that
// ends. op and info may be reused once it returns: the change holds
// copies. It reads no Sessions, so needs no lock.
func SessionChangeOf(op *inspect.Operation, info *RequestInfo) SessionChange {
	if info.Service == nil {
		return SessionChange{}
	}
	switch info.Service.TypeID {
	case id.ActivateSessionRequest_Encoding_DefaultBinary:
		if op.OPCUA != nil && op.OPCUA.Session != nil {
			cp := *op.OPCUA.Session // op's points into the Decoder's scratch space
			return SessionChange{activate: &cp, token: string(info.AuthToken)}
		}
	case id.CloseSessionRequest_Encoding_DefaultBinary:
		return SessionChange{closes: true, token: string(info.AuthToken)}
	}
	return SessionChange{}
}

// Response applies c, the change of the request that rh's response answers,
// if the server granted it: a Good ServiceResult (Part 4 §7.34.1: neither
// Bad nor Uncertain) in the response to that very service. A ServiceFault,
// a Bad or Uncertain result or a response of another type changes nothing.
func (s *Sessions) Response(c SessionChange, rh ResponseHeader) {
	if c.IsZero() || rh.ServiceResult&0xC0000000 != 0 {
		return
	}
	switch {
	case c.activate != nil && rh.TypeID == id.ActivateSessionResponse_Encoding_DefaultBinary:
		if s.byToken == nil {
			s.byToken = make(map[string]*inspect.OPCUASession)
		}
		if _, known := s.byToken[c.token]; !known {
			if len(s.order) >= MaxSessions {
				delete(s.byToken, s.order[0])
				s.order = append(s.order[:0], s.order[1:]...)
			}
			s.order = append(s.order, c.token)
		}
		s.byToken[c.token] = c.activate
	case c.closes && rh.TypeID == id.CloseSessionResponse_Encoding_DefaultBinary:
		if _, known := s.byToken[c.token]; !known {
			return
		}
		delete(s.byToken, c.token)
		for i, t := range s.order {
			if t == c.token {
				s.order = append(s.order[:i], s.order[i+1:]...)
				break
			}
		}
	}
}

// Len returns the number of sessions tracked.
func (s *Sessions) Len() int { return len(s.byToken) }
