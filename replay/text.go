package replay

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// WriteText writes the report for a terminal: a few summary lines, then
// aligned tables (listeners, operations, denials, problems) and the verdict.
func (r *Report) WriteText(w io.Writer) error {
	p := &printer{w: w}
	c := &r.Capture
	p.linef("%-11s %s, %s packets, %s (%s)", "captures", plural(len(r.Files), "file"), num(int(c.Packets)), bytesHuman(int64(c.Bytes)), strings.Join(r.Files, ", "))
	p.linef("%-11s %s", "policy", r.Policy)
	if r.Revision != "" {
		p.linef("%-11s %s", "revision", r.Revision)
	}
	if r.ConfigFile != "" {
		p.linef("%-11s from %s, matched by server address (listen or upstream)", "listeners", r.ConfigFile)
	} else {
		p.linef("%-11s synthetic, one per server address (no --config): <protocol>-<address>-<port>", "listeners")
	}
	for _, n := range r.ListenerNotes {
		p.linef("%-11s %s", "", n)
	}
	p.linef("%-11s %s", "flows", r.flowLine())
	p.linef("%-11s %s", "operations", r.opLine())
	p.blank()

	if len(r.Listeners) > 0 {
		t := newTable("LISTENER", "PROTOCOL", ">FLOWS", ">OPERATIONS", ">ALLOWED", ">DENIED")
		for _, l := range r.Listeners {
			name := l.Name
			if l.Synthetic {
				name += " *"
			}
			t.row(name, l.Protocol, num(l.Flows), num(l.Operations), num(l.Allowed), num(l.Denied))
		}
		t.write(p)
		if r.ConfigFile != "" && r.anySynthetic() {
			p.linef("* synthetic: no configured listener has this server address")
		}
		p.blank()
	}

	if len(r.PerOperation) > 0 {
		t := newTable("PROTOCOL", ">CODE", "OPERATION", ">TOTAL", ">ALLOWED", ">DENIED", ">EXC/FAULT", ">BAD RESP")
		for _, o := range r.PerOperation {
			t.row(o.Protocol, o.codeString(), o.Name, num(o.Total), num(o.Allowed), num(o.Denied), num(o.Exceptions), num(o.InvalidResponses))
		}
		t.write(p)
		p.blank()
	}

	if len(r.Denials) > 0 {
		t := newTable(">DENIED", "RULE", "REASON", "FIRST SEEN")
		for _, d := range r.Denials {
			t.row(num(d.Count), d.Rule, d.Reason, fmt.Sprintf("%s flow #%d %s", d.FirstFile, d.FirstFlow, timeString(d.FirstTime)))
		}
		t.write(p)
		p.blank()
	}

	p.linef("%-11s %s", "responses", r.responseLine())
	if len(r.Responses.ExceptionCodes) > 0 {
		p.linef("%-11s %s", "", "exceptions: "+r.exceptionLine())
	}
	if len(r.Responses.FaultCodes) > 0 {
		p.linef("%-11s %s", "", "faults: "+r.faultLine())
	}
	p.linef("%-11s %s", "capture", r.captureLine())
	for _, wn := range c.Warnings {
		p.linef("%-11s warning: %s", "", wn.String())
	}
	p.blank()

	if r.Malformed+r.Skipped > 0 || len(r.Problems) > 0 {
		p.linef("problems: %s malformed (the proxy would close the connection), %s skipped (%s after capture gaps or at a capture's end), %s invalid responses",
			num(r.Malformed), num(r.Skipped), bytesHuman(r.SkippedBytes), num(r.Responses.Invalid))
		t := newTable("FILE", ">FLOW", "DIRECTION", ">OFFSET", "TIME", "KIND", "REASON", "DETAIL")
		for _, pr := range r.Problems {
			detail := pr.Detail
			if pr.Kind == ProblemMalformed && pr.Flow.NotProtocol && pr.Offset == 0 && pr.Dir == 0 {
				detail = "not " + protocolTitle(pr.Flow.Kind) + ": " + detail
			}
			t.row(pr.Flow.File, "#"+strconv.FormatUint(pr.Flow.ID, 10), pr.Dir.String(), num64(pr.Offset), timeString(pr.Time), pr.Kind, pr.Reason, clip(detail, 90))
		}
		t.write(p)
		if listed := len(r.Problems); listed < r.Malformed+r.Skipped+r.Responses.Invalid {
			p.linef("(%s more not listed)", num(r.Malformed+r.Skipped+r.Responses.Invalid-listed))
		}
		p.blank()
	}

	switch {
	case r.Err != nil:
		p.linef("RESULT: INCOMPLETE, reading stopped: %v; %s of %s operations read before it would be denied (exit status 2)", r.Err, num(r.Denied), num(r.Operations))
	case r.Operations == 0:
		p.linef("RESULT: no Modbus or OPC UA operation found: nothing would be denied (exit status 0)")
	case r.Denied == 0:
		p.linef("RESULT: all %s operations would be allowed (exit status 0)", num(r.Operations))
	default:
		p.linef("RESULT: %s of %s operations would be DENIED (exit status 1)", num(r.Denied), num(r.Operations))
	}
	return p.err
}

func (r *Report) anySynthetic() bool {
	for _, l := range r.Listeners {
		if l.Synthetic {
			return true
		}
	}
	return false
}

func (r *Report) flowLine() string {
	f := &r.Flows
	parts := []string{}
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, num(n)+" "+what)
		}
	}
	add(f.Modbus, "Modbus")
	add(f.OPCUA, "OPC UA")
	add(f.TLS, "TLS (encrypted, not inspected)")
	add(f.Other, "other (not inspected)")
	add(f.Empty, "without client data")
	s := num(f.Total) + " TCP"
	if len(parts) > 0 {
		s += ": " + strings.Join(parts, ", ")
	}
	var notes []string
	if f.NotProtocol > 0 {
		notes = append(notes, plural(f.NotProtocol, "flow")+" on a Modbus/OPC UA address speaking something else")
	}
	if f.MidStream > 0 {
		notes = append(notes, num(f.MidStream)+" picked up mid-stream")
	}
	if len(notes) > 0 {
		s += " (" + strings.Join(notes, "; ") + ")"
	}
	return s
}

func (r *Report) opLine() string {
	s := fmt.Sprintf("%s decided: %s allowed, %s denied", num(r.Operations), num(r.Allowed), num(r.Denied))
	var notes []string
	if r.ProtocolViolations > 0 {
		notes = append(notes, num(r.ProtocolViolations)+" protocol violations refused without the policy")
	}
	if r.DecisionErrors > 0 {
		notes = append(notes, num(r.DecisionErrors)+" evaluations failed closed")
	}
	if len(notes) > 0 {
		s += " (" + strings.Join(notes, ", ") + ")"
	}
	return s
}

func (r *Report) responseLine() string {
	s := &r.Responses
	line := fmt.Sprintf("%s: %s paired with their request, %s unsolicited", num(s.Total), num(s.Paired), num(s.Unsolicited))
	if s.Opaque > 0 {
		line += fmt.Sprintf(", %s encrypted", num(s.Opaque))
	}
	return line + fmt.Sprintf("; %s requests unanswered; %s exceptions, %s faults, %s invalid",
		num(s.Unanswered), num(s.Exceptions), num(s.Faults), num(s.Invalid))
}

func (r *Report) exceptionLine() string {
	codes := make([]int, 0, len(r.Responses.ExceptionCodes))
	for c := range r.Responses.ExceptionCodes {
		codes = append(codes, int(c))
	}
	sort.Ints(codes)
	var parts []string
	for _, c := range codes {
		parts = append(parts, fmt.Sprintf("%d %s ×%s", c, ExceptionName(uint8(c)), num(r.Responses.ExceptionCodes[uint8(c)])))
	}
	return strings.Join(parts, ", ")
}

func (r *Report) faultLine() string {
	codes := make([]uint32, 0, len(r.Responses.FaultCodes))
	for c := range r.Responses.FaultCodes {
		codes = append(codes, c)
	}
	sort.Slice(codes, func(i, j int) bool { return codes[i] < codes[j] })
	var parts []string
	for _, c := range codes {
		parts = append(parts, StatusName(c)+" ×"+num(r.Responses.FaultCodes[c]))
	}
	return strings.Join(parts, ", ")
}

func (r *Report) captureLine() string {
	c := &r.Capture
	parts := []string{fmt.Sprintf("%s TCP segments", num(int(c.TCPPackets)))}
	add := func(n uint64, what string) {
		if n > 0 {
			parts = append(parts, num(int(n))+" "+what)
		}
	}
	add(c.NonTCP, "non-TCP packets")
	add(c.Gaps, fmt.Sprintf("gaps (%s missing)", bytesHuman(int64(c.GapBytes))))
	add(c.OutOfOrder, "out-of-order segments")
	add(c.RetransmittedBytes, "retransmitted bytes")
	add(c.TruncatedPackets, "segments cut by the snap length")
	add(c.Fragments, "IP fragments (not reassembled)")
	add(c.Undecodable, "undecodable packets")
	add(c.UnknownLinkType, "packets of an unknown link type")
	add(c.FlowLimitDrops, "packets dropped at the flow limit")
	return strings.Join(parts, ", ")
}

func (o *OperationStats) codeString() string {
	switch {
	case o.Protocol == KindOPCUA && o.Code == 0:
		return "-"
	case o.HasSub:
		return fmt.Sprintf("%d/%d", o.Code, o.Sub)
	}
	return strconv.FormatUint(uint64(o.Code), 10)
}

// ExceptionName names a Modbus exception code (spec §7).
func ExceptionName(c uint8) string {
	switch c {
	case 1:
		return "illegal function"
	case 2:
		return "illegal data address"
	case 3:
		return "illegal data value"
	case 4:
		return "server device failure"
	case 5:
		return "acknowledge"
	case 6:
		return "server device busy"
	case 8:
		return "memory parity error"
	case 10:
		return "gateway path unavailable"
	case 11:
		return "gateway target failed to respond"
	}
	return "undefined"
}

func protocolTitle(kind string) string {
	switch kind {
	case KindModbus:
		return "Modbus/TCP"
	case KindOPCUA:
		return "OPC UA"
	}
	return kind
}

// printer writes lines and keeps the first error.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) linef(format string, args ...any) {
	if p.err == nil {
		_, p.err = io.WriteString(p.w, printable(fmt.Sprintf(format, args...))+"\n")
	}
}

// printable escapes what a terminal would act on rather than show: control
// characters (C0, DEL, C1: escape sequences, carriage returns) and the
// other non-printing runes (bidirectional overrides, zero-width
// characters), as Go escapes (\x1b, \u202e). The report carries strings
// from the capture (OPC UA node ids in policy reasons, decoder details):
// an escape sequence there could erase the denials or the verdict from
// the operator's screen. Idempotent: escapes are printable.
func printable(s string) string {
	isPrint := func(r rune) bool { return r == utf8.RuneError || unicode.IsPrint(r) }
	if !strings.ContainsFunc(s, func(r rune) bool { return !isPrint(r) }) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if isPrint(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRuneToASCII(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

func (p *printer) blank() { p.linef("") }

// table renders aligned columns; a header starting with '>' is right
// aligned (numbers).
type table struct {
	head  []string
	right []bool
	rows  [][]string
}

func newTable(head ...string) *table {
	t := &table{}
	for _, h := range head {
		right := strings.HasPrefix(h, ">")
		t.head = append(t.head, strings.TrimPrefix(h, ">"))
		t.right = append(t.right, right)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = printable(c) // before the widths are measured
	}
	t.rows = append(t.rows, cells)
}

func (t *table) write(p *printer) {
	width := make([]int, len(t.head))
	for i, h := range t.head {
		width[i] = utf8.RuneCountInString(h)
	}
	for _, r := range t.rows {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		for i, c := range cells {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i > 0 {
				b.WriteString("  ")
			}
			if t.right[i] {
				b.WriteString(pad + c)
			} else if i < len(cells)-1 {
				b.WriteString(c + pad)
			} else {
				b.WriteString(c)
			}
		}
		p.linef("%s", b.String())
	}
	line(t.head)
	for _, r := range t.rows {
		line(r)
	}
}

// num formats n with thousands separators: 1,234,567.
func num(n int) string { return num64(int64(n)) }

func num64(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return num(n) + " " + what + "s"
}

func bytesHuman(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return strconv.FormatInt(n, 10) + " B"
}

func timeString(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000000Z")
}

func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
