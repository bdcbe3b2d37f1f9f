package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"
	mb "github.com/simonvetter/modbus"
	"github.com/spf13/cobra"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
	"github.com/conduit-ot/conduit/sim"
)

func newDemoCmd() *cobra.Command {
	var auditPath string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a self-contained demo: a simulated PLC, the proxy, the reference policy, real traffic",
		Long: `Run everything in this process on 127.0.0.1: a simulated PLC (Modbus/TCP),
Conduit in front of it with the embedded reference policy (rules/), and a
scripted client that makes allowed reads, an allowed write, and requests the
policy denies. Each decision is printed as it is read back from the audit
trail. Exits 0 when every step behaved as the policy says it must.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), auditPath)
		},
	}
	cmd.Flags().StringVar(&auditPath, "audit", "", "audit file (default: a new file in a temporary directory)")
	return cmd
}

// demoConfig is the demo's configuration: one Modbus listener in front of
// the simulated PLC, under the reference policy's listener name.
const demoConfig = `listeners:
  - name: plc-line1
    protocol: modbus
    listen: 127.0.0.1:0
    upstream: %s
    timeouts:
      response: 2s
  - name: opcua-line1
    protocol: opcua
    listen: 127.0.0.1:0
    upstream: %s
    timeouts:
      response: 5s
policy:
  path: embedded
  decision_timeout: 2s
audit:
  file: %s
log:
  level: error
`

func runDemo(ctx context.Context, out io.Writer, auditPath string) error {
	if auditPath == "" {
		dir, err := os.MkdirTemp("", "conduit-demo-")
		if err != nil {
			return err
		}
		auditPath = filepath.Join(dir, "audit.jsonl")
	}
	auditPath, err := filepath.Abs(auditPath)
	if err != nil {
		return err
	}

	plc, err := sim.StartPLC(sim.PLCOptions{})
	if err != nil {
		return err
	}
	defer plc.Close()
	for i := uint16(10); i < 20; i++ {
		plc.SetHolding(i, 100*(i-9))
	}
	ua, err := sim.StartOPCUA(sim.OPCUAOptions{})
	if err != nil {
		return err
	}
	defer ua.Close()

	cfg, err := config.Parse("demo.yaml", fmt.Appendf(nil, demoConfig, plc.Addr(), ua.Addr(), auditPath))
	if err != nil {
		return fmt.Errorf("demo configuration: %w", err)
	}
	cfg.Policy.Path = "embedded reference policy (rules/)"
	log, err := newLogger(cfg.Log, os.Stderr)
	if err != nil {
		return err
	}
	a, err := startApp(ctx, cfg, appOptions{Policy: &policy.Source{Path: "rules", FS: rules.FS}, Log: log})
	if err != nil {
		return err
	}
	a.serve()
	proxyAddr := a.listeners[0].Addr().String()
	uaProxyAddr := a.listeners[1].Addr().String()

	fmt.Fprintf(out, "Conduit demo: everything runs in this process, on 127.0.0.1\n\n")
	fmt.Fprintf(out, "  simulated PLC (Modbus/TCP)   %s\n", plc.Addr())
	fmt.Fprintf(out, "  simulated OPC UA server      %s\n", ua.Addr())
	fmt.Fprintf(out, "  conduit listener plc-line1   %s -> %s\n", proxyAddr, plc.Addr())
	fmt.Fprintf(out, "  conduit listener opcua-line1 %s -> %s\n", uaProxyAddr, ua.Addr())
	fmt.Fprintf(out, "  policy                       embedded reference policy (rules/), revision %s\n", a.engine.Revision())
	fmt.Fprintf(out, "  audit trail                  %s\n\n", auditPath)

	tail, err := newAuditTail(auditPath)
	if err != nil {
		a.shutdown(context.Background())
		return err
	}
	d := &demo{out: out, proxy: proxyAddr, tail: tail}
	runErr := d.script(plc)
	if runErr == nil {
		runErr = d.scriptOPCUA(ctx, uaProxyAddr, ua)
	}

	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.shutdown(sctx)

	writes := plc.Writes()
	fmt.Fprintf(out, "\nThe PLC received %d write(s):", len(writes))
	for _, w := range writes {
		fmt.Fprintf(out, " %s %d = %v;", w.Table, w.Address, w.Values)
	}
	fmt.Fprintf(out, "\nThe OPC UA server received %d write(s) and %d method call(s).", len(ua.Writes()), len(ua.Calls()))
	fmt.Fprintf(out, "\nEvery one of them has an allowed audit event, written before it was forwarded.\n")
	fmt.Fprintf(out, "Audit trail (JSON lines, ECS fields): %s\n", auditPath)
	if runErr == nil && len(writes) != d.allowedWrites {
		runErr = fmt.Errorf("the PLC received %d writes, the policy allowed %d", len(writes), d.allowedWrites)
	}
	if runErr == nil && (len(ua.Writes()) != d.allowedUAWrites || len(ua.Calls()) != 1) {
		runErr = fmt.Errorf("the OPC UA server received %d writes and %d calls, the policy allowed %d and 1", len(ua.Writes()), len(ua.Calls()), d.allowedUAWrites)
	}
	if runErr != nil {
		return fmt.Errorf("demo failed: %w", runErr)
	}
	fmt.Fprintf(out, "Demo finished: every request was decided as the policy says.\n")
	return nil
}

type demo struct {
	out             io.Writer
	proxy           string
	tail            *auditTail
	step            int
	allowedWrites   int
	allowedUAWrites int
}

func (d *demo) script(plc *sim.PLC) error {
	c, err := mb.NewClient(&mb.ClientConfiguration{URL: "tcp://" + d.proxy, Timeout: 3 * time.Second})
	if err != nil {
		return err
	}
	if err := c.Open(); err != nil {
		return err
	}
	defer c.Close()

	var regs []uint16
	if err := d.run("An HMI reads the setpoints (FC 3, holding registers 10-13)", "read_holding_registers", true, func() error {
		regs, err = c.ReadRegisters(10, 4, mb.HOLDING_REGISTER)
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "     values: %v\n", regs)
	if err := d.run("The HMI reads measurements (FC 4, input registers 0-3)", "read_input_registers", true, func() error {
		regs, err = c.ReadRegisters(0, 4, mb.INPUT_REGISTER)
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "     values: %v\n", regs)
	if err := d.run("An operator changes setpoint 12 to 500 (FC 6): inside 0..1000", "write_single_register", true, func() error {
		return c.WriteRegister(12, 500)
	}); err != nil {
		return err
	}
	d.allowedWrites++
	if err := d.run("Malware writes 5000 to setpoint 12 (FC 6): above the allowed maximum", "write_single_register", false, func() error {
		return c.WriteRegister(12, 5000)
	}); err != nil {
		return err
	}
	if err := d.run("Malware switches coil 50 (FC 5): outside the writable coils 0-15", "write_single_coil", false, func() error {
		return c.WriteCoil(50, true)
	}); err != nil {
		return err
	}
	if err := d.run("A scanner sends diagnostics 'force listen only mode' (FC 8 sub-function 4)", "diagnostics", false, func() error {
		return rawRequest(d.proxy, []byte{0x00, 0x08, 0x00, 0x00, 0x00, 0x06, 0x01, 0x08, 0x00, 0x04, 0x00, 0x00})
	}); err != nil {
		return err
	}
	if err := d.run("A broadcast write to unit 0 (FC 6)", "write_single_register", false, func() error {
		return rawRequest(d.proxy, []byte{0x00, 0x09, 0x00, 0x00, 0x00, 0x06, 0x00, 0x06, 0x00, 0x0c, 0x00, 0x07})
	}); err != nil {
		return err
	}
	var v uint16
	if err := d.run("The HMI reads setpoint 12 back", "read_holding_registers", true, func() error {
		v, err = c.ReadRegister(12, mb.HOLDING_REGISTER)
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "     value: %d (the denied write never reached the PLC)\n", v)
	if v != 500 || plc.Holding(12) != 500 {
		return fmt.Errorf("setpoint 12 is %d, want 500", v)
	}
	return nil
}

// scriptOPCUA drives the OPC UA listener with gopcua's client.
func (d *demo) scriptOPCUA(ctx context.Context, addr string, srv *sim.OPCUAServer) error {
	fmt.Fprintf(d.out, "\nOPC UA, through listener opcua-line1 (security mode none):\n")
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := opcua.NewClient("opc.tcp://"+addr, opcua.SecurityMode(ua.MessageSecurityModeNone),
		opcua.AutoReconnect(false), opcua.RequestTimeout(5*time.Second))
	if err != nil {
		return err
	}
	if err := c.Connect(cctx); err != nil {
		return fmt.Errorf("OPC UA connect: %w", err)
	}
	defer c.Close(context.Background())
	write := func(v float64) error {
		resp, err := c.Write(cctx, &ua.WriteRequest{NodesToWrite: []*ua.WriteValue{{
			NodeID:      ua.MustParseNodeID(sim.OPCUASetpoint),
			AttributeID: ua.AttributeIDValue,
			Value:       &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(v)},
		}}})
		if err != nil {
			return err
		}
		if resp.Results[0] != ua.StatusOK {
			return resp.Results[0]
		}
		return nil
	}
	var v *ua.DataValue
	if err := d.run("An HMI reads the line setpoint (Read)", "read", true, func() error {
		resp, err := c.Read(cctx, &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{NodeID: ua.MustParseNodeID(sim.OPCUASetpoint), AttributeID: ua.AttributeIDValue}}})
		if err == nil {
			v = resp.Results[0]
		}
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "     value: %v\n", v.Value.Value())
	if err := d.run("An operator writes setpoint 750 (Write): inside 0..1000", "write", true, func() error { return write(750) }); err != nil {
		return err
	}
	d.allowedUAWrites++
	if err := d.run("Malware writes setpoint 5000 (Write): above the maximum", "write", false, func() error { return write(5000) }); err != nil {
		return err
	}
	if err := d.run("The operator resets the counters (Call ResetCounters)", "call", true, func() error {
		res, err := c.Call(cctx, &ua.CallMethodRequest{ObjectID: ua.MustParseNodeID(sim.OPCUALine1), MethodID: ua.MustParseNodeID(sim.OPCUAResetCounters)})
		if err == nil && res.StatusCode != ua.StatusOK {
			return res.StatusCode
		}
		return err
	}); err != nil {
		return err
	}
	if got := srv.Setpoint(); got != 750 {
		return fmt.Errorf("OPC UA setpoint is %v, want 750", got)
	}
	fmt.Fprintf(d.out, "     the server's setpoint is %v: the denied write never reached it\n", srv.Setpoint())
	return nil
}

// run performs one step and prints the decisions the audit trail recorded
// for it. A step that should be denied must fail with a Modbus exception.
func (d *demo) run(title, op string, allowed bool, do func() error) error {
	d.step++
	fmt.Fprintf(d.out, "%d. %s\n", d.step, title)
	err := do()
	switch {
	case allowed && err != nil:
		return fmt.Errorf("step %d: %v", d.step, err)
	case !allowed && err == nil:
		return fmt.Errorf("step %d: the request was not refused", d.step)
	case !allowed:
		fmt.Fprintf(d.out, "     client got: %v\n", err)
	}
	ev, terr := d.tail.next(op)
	if terr != nil {
		return terr
	}
	fmt.Fprintf(d.out, "     %s\n", ev)
	return nil
}

// rawRequest sends one hand-built ADU (for the function codes the Modbus
// client library lacks) and returns the exception it gets as an error.
func rawRequest(addr string, adu []byte) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write(adu); err != nil {
		return err
	}
	resp := make([]byte, 260)
	n, err := io.ReadAtLeast(conn, resp, 9)
	if err != nil {
		return err
	}
	if resp[7]&0x80 != 0 {
		return fmt.Errorf("exception 0x%02x from function %d", resp[8], resp[7]&0x7f)
	}
	_ = n
	return nil
}

// auditTail reads request events appended to the audit file.
type auditTail struct {
	f *os.File
	r *bufio.Reader
}

func newAuditTail(path string) (*auditTail, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return &auditTail{f: f, r: bufio.NewReader(f)}, nil
}

// next returns the next request event for operation op, formatted. Events
// of other operations (an OPC UA client's session management, its own
// reads) are decided and audited too, but not part of the step. It waits
// briefly: events are written before the response is sent, so they are
// normally there already.
func (t *auditTail) next(op string) (string, error) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		line, err := t.r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			if time.Now().After(deadline) {
				return "", fmt.Errorf("audit trail: no %s event for this step", op)
			}
			t.r = bufio.NewReader(io.MultiReader(bytesReader(line), t.f))
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err != nil {
			return "", err
		}
		var ev map[string]any
		if err := json.Unmarshal(line, &ev); err != nil {
			return "", fmt.Errorf("audit trail: %w", err)
		}
		if get(ev, "event.action") == "request" && get(ev, "conduit.operation.name") == op {
			return formatDecision(ev), nil
		}
	}
}

func bytesReader(b []byte) io.Reader { return strings.NewReader(string(b)) }

// get reads a dotted path from a decoded event (zap writes nested objects).
func get(ev map[string]any, path string) any {
	var cur any = ev
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if v, ok := m[k]; ok {
			cur = v
			continue
		}
		return nil
	}
	return cur
}

func formatDecision(ev map[string]any) string {
	verdict := "ALLOWED"
	if types, _ := get(ev, "event.type").([]any); len(types) > 0 && types[0] == "denied" {
		verdict = "DENIED "
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %v", verdict, get(ev, "conduit.operation.name"))
	for _, f := range []string{"unit", "function", "subfunction", "table", "address", "quantity", "values"} {
		if v := get(ev, "modbus."+f); v != nil {
			fmt.Fprintf(&b, " %s=%v", f, v)
		}
	}
	if w, _ := get(ev, "opcua.writes").([]any); len(w) > 0 {
		for _, x := range w {
			if m, ok := x.(map[string]any); ok {
				fmt.Fprintf(&b, " %v=%v", m["node_id"], m["value"])
			}
		}
	}
	if calls, _ := get(ev, "opcua.calls").([]any); len(calls) > 0 {
		for _, x := range calls {
			if m, ok := x.(map[string]any); ok {
				fmt.Fprintf(&b, " object=%v method=%v", m["object_id"], m["method_id"])
			}
		}
	}
	fmt.Fprintf(&b, "\n              reason: %v", get(ev, "event.reason"))
	if v := get(ev, "modbus.exception_code"); v != nil {
		fmt.Fprintf(&b, "; answered with exception %v", v)
	}
	if v := get(ev, "opcua.status_name"); v != nil {
		fmt.Fprintf(&b, "; answered with %v", v)
	}
	fmt.Fprintf(&b, "\n              audit: event.sequence %v, decision %v", get(ev, "event.sequence"), get(ev, "event.id"))
	return b.String()
}
