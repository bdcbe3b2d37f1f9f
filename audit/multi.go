package audit

import (
	"context"
	"errors"
	"fmt"
)

var errNoRecorders = errors.New("audit: Multi without recorders")

// ContextRecorder is a Recorder whose wait for room in a full queue can be
// bounded (Sink.RecordContext).
type ContextRecorder interface {
	Recorder
	RecordContext(ctx context.Context, ev *Event) error
}

// Multi returns a Recorder that records each event in every r, in order,
// and succeeds only if all of them do (a tee). With no recorders it fails
// every event: an empty tee records nothing, and the proxy must not
// forward what is recorded nowhere. It stops at the first
// failure: put the authoritative trail (the file) first, so an event whose
// file write failed, and whose operation is therefore denied, is not shown
// anywhere else as written.
//
// Each recorder assigns its own sequence number (event.sequence is per
// file): after Record, ev.Seq is the last recorder's. ev.Time is set once,
// by the first, so every copy has the same @timestamp.
//
// The returned recorder is also a BatchRecorder: each recorder gets the
// events that every recorder before it wrote, in one batch when it is a
// BatchRecorder itself.
func Multi(rs ...Recorder) ContextRecorder {
	return multi(append([]Recorder(nil), rs...))
}

var _ BatchRecorder = multi(nil)

// RecordBatch records evs in every recorder, in order; an event that one
// recorder failed is not given to the next, and errs[i] is its first error.
func (m multi) RecordBatch(evs []*Event, errs []error) {
	if len(m) == 0 {
		for i := range errs {
			errs[i] = errNoRecorders
		}
		return
	}
	clear(errs)
	var sub []*Event
	var subErrs, scratch []error
	var idx []int
	for n, r := range m {
		sub, idx = sub[:0], idx[:0]
		for i, ev := range evs {
			if errs[i] == nil {
				sub, idx = append(sub, ev), append(idx, i)
			}
		}
		if len(sub) == 0 {
			return
		}
		if cap(scratch) < len(sub) {
			scratch = make([]error, len(sub))
		}
		subErrs = scratch[:len(sub)]
		RecordBatch(r, sub, subErrs)
		for j, err := range subErrs {
			if err != nil {
				errs[idx[j]] = fmt.Errorf("audit: recorder %d of %d: %w", n+1, len(m), err)
			}
		}
	}
}

type multi []Recorder

func (m multi) Record(ev *Event) error {
	return m.RecordContext(context.Background(), ev)
}

func (m multi) RecordContext(ctx context.Context, ev *Event) error {
	if len(m) == 0 {
		return errNoRecorders
	}
	for i, r := range m {
		var err error
		if cr, ok := r.(ContextRecorder); ok {
			err = cr.RecordContext(ctx, ev)
		} else {
			err = r.Record(ev)
		}
		if err != nil {
			return fmt.Errorf("audit: recorder %d of %d: %w", i+1, len(m), err)
		}
	}
	return nil
}
