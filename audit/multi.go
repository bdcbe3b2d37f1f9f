package audit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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
// anywhere else as written. When a later recorder fails an event that the
// earlier ones wrote, each earlier one gets an ActionAuditFailure event
// naming its sequence number (unwritten).
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
	// seqs[n][i]: the sequence number recorder n gave evs[i] (kept only
	// when a later recorder fails them: see unwritten).
	var seqs [][]uint64
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
		var failed []int
		var first error
		for j, err := range subErrs {
			if err != nil {
				errs[idx[j]] = fmt.Errorf("audit: recorder %d of %d: %w", n+1, len(m), err)
				failed = append(failed, idx[j])
				if first == nil {
					first = errs[idx[j]]
				}
			}
		}
		if len(failed) > 0 && n > 0 {
			m.unwritten(n, func(k int) []uint64 {
				out := make([]uint64, len(failed))
				for j, i := range failed {
					out[j] = seqs[k][i]
				}
				return out
			}, first)
		}
		if n+1 < len(m) {
			if seqs == nil {
				seqs = make([][]uint64, len(m))
			}
			seqs[n] = make([]uint64, len(evs))
			for i, ev := range evs {
				if errs[i] == nil {
					seqs[n][i] = ev.Seq
				}
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
	var seqs []uint64 // the sequence number each recorder gave ev
	for i, r := range m {
		var err error
		if cr, ok := r.(ContextRecorder); ok {
			err = cr.RecordContext(ctx, ev)
		} else {
			err = r.Record(ev)
		}
		if err != nil {
			err = fmt.Errorf("audit: recorder %d of %d: %w", i+1, len(m), err)
			if i > 0 {
				m.unwritten(i, func(k int) []uint64 { return seqs[k : k+1] }, err)
			}
			return err
		}
		if i+1 < len(m) {
			seqs = append(seqs, ev.Seq)
		}
	}
	return nil
}

// unwritten runs after recorder n failed events that the recorders before
// it wrote (a tee whose copy to standard output broke after the file write
// succeeded): the caller is told that recording failed and refuses the
// operations, so each earlier recorder gets an ActionAuditFailure event
// saying that its events of those sequence numbers (seqs(k), for recorder
// k) were not written everywhere and that what they allowed was refused.
// Without it the file would say "allowed" of an operation that never went
// out.
func (m multi) unwritten(n int, seqs func(k int) []uint64, err error) {
	for k := range n {
		ev := &Event{Action: ActionAuditFailure, Outcome: OutcomeFailure,
			Reason: fmt.Sprintf("event.sequence %s of this trail not written to every audit sink, so recording failed and what they allowed was refused: %v", seqRanges(seqs(k)), err)}
		// Best effort: if this recorder fails too, it reports its own
		// loss (Sink) and the caller has the error already.
		m[k].Record(ev)
	}
}

// seqRanges writes ascending sequence numbers as "4", "4..7" or "4..7, 9".
func seqRanges(seqs []uint64) string {
	var b strings.Builder
	for i := 0; i < len(seqs); {
		j := i
		for j+1 < len(seqs) && seqs[j+1] == seqs[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.FormatUint(seqs[i], 10))
		if j > i {
			b.WriteString("..")
			b.WriteString(strconv.FormatUint(seqs[j], 10))
		}
		i = j + 1
	}
	return b.String()
}
