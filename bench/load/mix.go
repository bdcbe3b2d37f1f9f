package load

// The request mix. Reads are FC 3 of 10 holding registers from one of ten
// blocks (0, 10, ... 90): a SCADA poll of the process image. Writes
// alternate FC 6 and FC 16 to the setpoints the reference policy grants
// loopback clients (holding registers 10-19, values 0..1000), with the few
// distinct values of a setpoint loop:
//
//   - FC 6: registers 10-13, each set to one of 500, 505, 510, 515, 520
//     (20 distinct requests);
//   - FC 16: registers 14-15 set to one of five (low, high) limit pairs
//     (5 distinct requests).
//
// The policy's decision cache is keyed on the whole input document, so the
// number of distinct requests matters: this mix has 35 per client
// connection (the client's port is part of the document).

var (
	fc6Values  = [...]uint16{500, 505, 510, 515, 520}
	fc16Values = [...][2]uint16{{100, 900}, {110, 890}, {120, 880}, {130, 870}, {140, 860}}
)

const (
	kindRead = iota
	kindFC6
	kindFC16
)

// mix decides, request by request, what a connection sends next. It is
// deterministic: writeFrac of the requests are writes, spread evenly.
type mix struct {
	writeFrac float64
	acc       float64
	reads     uint32
	writes    uint32
}

// next appends the next request with transaction id tid to b and returns
// the pending entry that will validate its response.
func (m *mix) next(b []byte, tid uint16) ([]byte, pending) {
	m.acc += m.writeFrac
	p := pending{tid: tid}
	if m.acc < 1 {
		p.kind, p.fc = kindRead, 3
		p.addr, p.qty = uint16(m.reads%10)*10, 10
		m.reads++
		return append(b, byte(tid>>8), byte(tid), 0, 0, 0, 6, 1, 3,
			byte(p.addr>>8), byte(p.addr), 0, byte(p.qty)), p
	}
	m.acc--
	w := m.writes
	m.writes++
	if w%2 == 0 {
		w /= 2
		p.kind, p.fc = kindFC6, 6
		p.addr = 10 + uint16(w%4)
		p.qty = fc6Values[(w/4)%uint32(len(fc6Values))] // the value, for the echo check
		return append(b, byte(tid>>8), byte(tid), 0, 0, 0, 6, 1, 6,
			byte(p.addr>>8), byte(p.addr), byte(p.qty>>8), byte(p.qty)), p
	}
	w /= 2
	v := fc16Values[w%uint32(len(fc16Values))]
	p.kind, p.fc, p.addr, p.qty = kindFC16, 16, 14, 2
	return append(b, byte(tid>>8), byte(tid), 0, 0, 0, 11, 1, 16, 0, 14, 0, 2, 4,
		byte(v[0]>>8), byte(v[0]), byte(v[1]>>8), byte(v[1])), p
}

// pending is a request in flight.
type pending struct {
	tid   uint16
	kind  uint8
	fc    uint8
	addr  uint16
	qty   uint16 // FC 6: the value written
	sched int64  // ns since the run's start: when it should have been sent (open loop)
	sent  int64  // ns since the run's start: when it was written
}

// check validates a whole response ADU against its request: header, unit,
// function (an exception is an error), byte count or echo. It returns ""
// or the kind of error.
func (p *pending) check(adu []byte) string {
	if len(adu) < 9 || adu[2] != 0 || adu[3] != 0 || int(adu[4])<<8|int(adu[5]) != len(adu)-6 || adu[6] != 1 {
		return "bad_header"
	}
	pdu := adu[7:]
	if pdu[0] == p.fc|0x80 {
		return "exception"
	}
	if pdu[0] != p.fc {
		return "wrong_function"
	}
	u16 := func(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }
	switch p.kind {
	case kindRead:
		if int(pdu[1]) != 2*int(p.qty) || len(pdu) != 2+2*int(p.qty) {
			return "byte_count"
		}
	case kindFC6, kindFC16:
		if len(pdu) != 5 || u16(pdu[1:]) != p.addr || u16(pdu[3:]) != p.qty {
			return "echo"
		}
	}
	return ""
}
