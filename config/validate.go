package config

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
)

// validate checks the defaulted configuration and returns every problem
// with its field path; Parse adds file and line.
func (c *Config) validate() []*Error {
	var errs []*Error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &Error{Field: field, Msg: fmt.Sprintf(format, args...)})
	}

	if len(c.Listeners) == 0 {
		bad("listeners", "at least one listener is required")
	}
	names := map[string]int{}
	listens := map[string]int{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		p := fmt.Sprintf("listeners[%d]", i)
		switch {
		case l.Name == "":
			bad(p+".name", "required (it names the listener in policy input and audit events)")
		case !validName(l.Name):
			bad(p+".name", "%q: use letters, digits, '-', '_' and '.' only", l.Name)
		default:
			if j, dup := names[l.Name]; dup {
				bad(p+".name", "%q is already the name of listeners[%d]", l.Name, j)
			}
			names[l.Name] = i
		}
		switch l.Protocol {
		case ProtocolModbus, ProtocolOPCUA:
		case "":
			bad(p+".protocol", "required: %q or %q", ProtocolModbus, ProtocolOPCUA)
		default:
			bad(p+".protocol", "%q is not supported: use %q or %q", l.Protocol, ProtocolModbus, ProtocolOPCUA)
		}
		if err := checkHostPort(l.Listen, true); err != nil {
			bad(p+".listen", "%v", err)
		} else if !strings.HasSuffix(l.Listen, ":0") { // port 0: each gets its own
			if j, dup := listens[l.Listen]; dup {
				bad(p+".listen", "%s is also the address of listeners[%d]", l.Listen, j)
			} else {
				// The same socket written another way ([::1] and
				// [0:0::1]), or a wildcard address on the same port as
				// another listener: the second bind would fail at start.
				for j := range c.Listeners[:i] {
					if prev := c.Listeners[j].Listen; sameSocket(l.Listen, prev) {
						bad(p+".listen", "%s overlaps %s, the address of listeners[%d]", l.Listen, prev, j)
						break
					}
				}
			}
			listens[l.Listen] = i
		}
		if err := checkHostPort(l.Upstream, false); err != nil {
			bad(p+".upstream", "%v", err)
		}
		switch l.DenyAction {
		case "exception", "reset", "drop":
		default:
			bad(p+".deny_action", "%q: use \"exception\", \"reset\" or \"drop\"", l.DenyAction)
		}
		if l.MaxConnections < 1 {
			bad(p+".max_connections", "must be at least 1")
		} else if l.MaxConnections > c.Limits.MaxConnections {
			bad(p+".max_connections", "%d is above limits.max_connections (%d)", l.MaxConnections, c.Limits.MaxConnections)
		}
		if l.MaxOutstanding < 1 || l.MaxOutstanding > 1024 {
			bad(p+".max_outstanding", "%d: must be between 1 and 1024", l.MaxOutstanding)
		}
		if l.TLS != nil {
			errs = append(errs, l.TLS.validate(p+".tls")...)
		}
		if l.UpstreamTLS != nil {
			errs = append(errs, l.UpstreamTLS.validate(p+".upstream_tls")...)
		}
		if l.OPCUA != nil {
			if l.Protocol != ProtocolOPCUA {
				bad(p+".opcua", "only for protocol %q", ProtocolOPCUA)
			} else {
				errs = append(errs, l.OPCUA.validate(p+".opcua")...)
			}
		}
	}

	errs = append(errs, c.upstreamLoops()...)

	if c.Policy.Path == "" {
		bad("policy.path", "required: a directory of .rego/.json files or an OPA bundle (.tar.gz)")
	}
	if c.Policy.DecisionTimeout <= 0 {
		bad("policy.decision_timeout", "must be positive")
	}
	if c.Audit.File == "" {
		bad("audit.file", "required: Conduit does not forward without an audit trail")
	} else if msg := c.auditFileClash(); msg != "" {
		bad("audit.file", "%s", msg)
	}
	if d := c.Audit.ReadDelay.D(); d < 0 || d > MaxAuditReadDelay {
		bad("audit.read_delay", "%s: must be between 0 (reads wait for their event) and %s", d, MaxAuditReadDelay)
	}
	if c.Limits.MaxConnections < 1 {
		bad("limits.max_connections", "must be at least 1")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q: use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		bad("log.format", "%q: use json or console", c.Log.Format)
	}
	if c.Metrics.Listen != "" {
		if err := checkHostPort(c.Metrics.Listen, true); err != nil {
			bad("metrics.listen", "%v", err)
		} else if !strings.HasSuffix(c.Metrics.Listen, ":0") {
			for j := range c.Listeners {
				if l := c.Listeners[j].Listen; sameSocket(c.Metrics.Listen, l) {
					bad("metrics.listen", "%s overlaps %s, the address of listeners[%d]", c.Metrics.Listen, l, j)
					break
				}
			}
		}
	}
	return errs
}

// auditFileClash says why audit.file cannot be where it is, or "": the
// proxy appends to it, so it must not be a file the configuration names
// for something else, nor lie in the policy directory (every write would
// wake the policy watch, and a .json/.yaml name would be loaded as data).
func (c *Config) auditFileClash() string {
	audit := filepath.Clean(c.Audit.File)
	if c.File != "" && audit == filepath.Clean(c.File) {
		return fmt.Sprintf("%s is the configuration file itself", c.Audit.File)
	}
	if c.Policy.Path != "" {
		// The same path as a directory fails at start (the audit file
		// cannot be opened); the same path as a bundle would not.
		pol := filepath.Clean(c.Policy.Path)
		if audit == pol && strings.HasSuffix(pol, ".tar.gz") {
			return fmt.Sprintf("%s is also policy.path", c.Audit.File)
		}
		if rel, err := filepath.Rel(pol, audit); err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return fmt.Sprintf("%s is inside the policy directory %s: keep the audit trail out of it", c.Audit.File, c.Policy.Path)
		}
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		p := fmt.Sprintf("listeners[%d]", i)
		var files [][2]string // field, path
		if t := l.TLS; t != nil {
			files = append(files, [2]string{".tls.cert_file", t.CertFile}, [2]string{".tls.key_file", t.KeyFile},
				[2]string{".tls.client_ca_file", t.ClientCAFile}, [2]string{".tls.crl_file", t.CRLFile})
			if st := t.StepCA; st != nil {
				files = append(files, [2]string{".tls.step_ca.token_file", st.TokenFile})
			}
		}
		if u := l.UpstreamTLS; u != nil {
			files = append(files, [2]string{".upstream_tls.cert_file", u.CertFile}, [2]string{".upstream_tls.key_file", u.KeyFile},
				[2]string{".upstream_tls.ca_file", u.CAFile})
		}
		for _, f := range files {
			if f[1] != "" && filepath.Clean(f[1]) == audit {
				return fmt.Sprintf("%s is also %s%s", c.Audit.File, p, f[0])
			}
		}
	}
	return ""
}

// upstreamLoops reports a listener whose upstream is its own listen
// address, or leads back to it through other listeners: every connection
// would open another one to the proxy itself until the limits run out.
func (c *Config) upstreamLoops() []*Error {
	// next[i] is the listener that listener i's upstream reaches, or -1.
	next := make([]int, len(c.Listeners))
	for i := range c.Listeners {
		next[i] = -1
		for j := range c.Listeners {
			if reaches(c.Listeners[i].Upstream, c.Listeners[j].Listen) {
				next[i] = j
				break
			}
		}
	}
	var errs []*Error
	for i := range c.Listeners {
		path := []string{}
		for j, steps := next[i], 0; j >= 0 && steps < len(next); j, steps = next[j], steps+1 {
			if j == i {
				msg := fmt.Sprintf("%q is the listen address of this listener: the proxy would connect to itself", c.Listeners[i].Upstream)
				if len(path) > 0 {
					msg = fmt.Sprintf("%q leads back to this listener through %s: the proxies would connect to each other in a loop",
						c.Listeners[i].Upstream, strings.Join(path, ", "))
				}
				errs = append(errs, &Error{Field: fmt.Sprintf("listeners[%d].upstream", i), Msg: msg})
				break
			}
			path = append(path, fmt.Sprintf("listeners[%d]", j))
		}
	}
	return errs
}

// sameSocket reports whether two listen addresses cannot both be bound:
// the same port, and the same address, or a wildcard host on either side.
func sameSocket(a, b string) bool {
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || ap != bp {
		return false
	}
	wild := func(h string) bool { ip := net.ParseIP(h); return h == "" || ip != nil && ip.IsUnspecified() }
	if strings.EqualFold(ah, bh) || wild(ah) || wild(bh) {
		return true
	}
	aip, bip := net.ParseIP(ah), net.ParseIP(bh)
	return aip != nil && bip != nil && aip.Equal(bip)
}

// reaches reports whether dialing upstream connects to a socket listening
// on listen: the same port, and the same host, or a listen host that
// accepts on every local address (empty, 0.0.0.0, ::) dialed through a
// local one (localhost, a loopback or unspecified address), or localhost
// dialed to a loopback listen address. Names other than localhost are not
// resolved: validation does no DNS.
func reaches(upstream, listen string) bool {
	uh, up, err1 := net.SplitHostPort(upstream)
	lh, lp, err2 := net.SplitHostPort(listen)
	if err1 != nil || err2 != nil || up != lp {
		return false
	}
	if strings.EqualFold(uh, lh) {
		return true
	}
	if ua, la := net.ParseIP(uh), net.ParseIP(lh); ua != nil && la != nil && ua.Equal(la) {
		return true
	}
	local := func(h string) bool {
		ip := net.ParseIP(h)
		return h == "" || strings.EqualFold(h, "localhost") || ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
	}
	la := net.ParseIP(lh)
	switch {
	case lh == "" || la != nil && la.IsUnspecified():
		return local(uh)
	case la != nil && la.IsLoopback():
		return strings.EqualFold(uh, "localhost")
	}
	return false
}

func (t *TLS) validate(p string) []*Error {
	var errs []*Error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &Error{Field: p + field, Msg: fmt.Sprintf(format, args...)})
	}
	if t.StepCA != nil {
		if t.CertFile != "" || t.KeyFile != "" {
			bad(".step_ca", "set either step_ca or cert_file/key_file, not both")
		}
		s := t.StepCA
		if u, err := url.Parse(s.URL); err != nil || u.Scheme != "https" || u.Host == "" {
			bad(".step_ca.url", "%q: must be an https:// URL", s.URL)
		}
		if b, err := hex.DecodeString(s.RootFingerprint); err != nil || len(b) != 32 {
			bad(".step_ca.root_fingerprint", "must be the SHA-256 fingerprint of the root certificate (64 hex digits)")
		}
		if s.Dir == "" {
			bad(".step_ca.dir", "required: where the obtained certificate and key are kept")
		}
	} else {
		if t.CertFile == "" {
			bad(".cert_file", "required (or step_ca)")
		}
		if t.KeyFile == "" {
			bad(".key_file", "required (or step_ca)")
		}
	}
	if t.ClientCAFile == "" {
		bad(".client_ca_file", "required: client certificates are always verified")
	}
	if !validTLSVersion(t.MinVersion) {
		bad(".min_version", "%q: use \"1.3\" or \"1.2\" (older versions are refused)", t.MinVersion)
	}
	return errs
}

func (u *UpstreamTLS) validate(p string) []*Error {
	var errs []*Error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &Error{Field: p + field, Msg: fmt.Sprintf(format, args...)})
	}
	// Modbus/TCP Security is mutually authenticated: the proxy always
	// presents a client certificate to the device.
	if u.CertFile == "" {
		bad(".cert_file", "required: the client certificate the proxy presents to the device")
	}
	if u.KeyFile == "" {
		bad(".key_file", "required: the key of cert_file")
	}
	if u.CAFile == "" {
		bad(".ca_file", "required: the device certificate is always verified")
	}
	if !validTLSVersion(u.MinVersion) {
		bad(".min_version", "%q: use \"1.3\" or \"1.2\"", u.MinVersion)
	}
	return errs
}

func (o *OPCUA) validate(p string) []*Error {
	var errs []*Error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &Error{Field: p + field, Msg: fmt.Sprintf(format, args...)})
	}
	switch o.SecurityMode {
	case "none", "sign", "sign_and_encrypt":
	default:
		bad(".security_mode", "%q: use none, sign or sign_and_encrypt", o.SecurityMode)
	}
	if u, err := url.Parse(o.EndpointURL); err != nil || u.Scheme != "opc.tcp" || u.Host == "" {
		bad(".endpoint_url", "%q: must be an opc.tcp:// URL", o.EndpointURL)
	}
	// Part 6, 7.1.2.3: a chunk must be able to hold at least 8192 bytes.
	if o.MaxChunkSize < 8192 || o.MaxChunkSize > 16<<20 {
		bad(".max_chunk_size", "%d: must be between 8192 and 16777216", o.MaxChunkSize)
	}
	if o.MaxMessageSize < o.MaxChunkSize || o.MaxMessageSize > 256<<20 {
		bad(".max_message_size", "%d: must be between max_chunk_size and 268435456", o.MaxMessageSize)
	}
	if o.MaxChunkCount < 1 || o.MaxChunkCount > 4096 {
		bad(".max_chunk_count", "%d: must be between 1 and 4096", o.MaxChunkCount)
	}
	return errs
}

func validTLSVersion(v string) bool { return v == "1.2" || v == "1.3" }

func validName(s string) bool {
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return false
		}
	}
	return true
}

// checkHostPort accepts host:port with a numeric port (0 only for listen
// addresses, where it picks a free port).
func checkHostPort(addr string, listen bool) error {
	if addr == "" {
		return fmt.Errorf("required (host:port)")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %v", addr, strings.TrimPrefix(err.Error(), "address "+addr+": "))
	}
	if !listen && host == "" {
		return fmt.Errorf("%q: a host is required", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !listen) {
		return fmt.Errorf("%q: invalid port %q", addr, port)
	}
	return nil
}
