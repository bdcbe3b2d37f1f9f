package replay

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/inspect/opcua"
)

// Well-known server ports: Modbus/TCP (502), Modbus/TCP Security (802, TLS)
// and OPC UA binary (4840).
const (
	portModbus = 502
	portMbaps  = 802
	portOPCUA  = 4840
)

// listener is what a flow's policy input needs of the listener it arrived
// on: from the configuration, or synthesized from the server address.
type listener struct {
	name     string
	protocol string // inspect.ProtocolModbus or inspect.ProtocolOPCUA
	upstream string
	// tls: the matched side of the listener speaks TLS (listen side with
	// tls:, upstream side with upstream_tls:), so the capture shows only
	// encrypted bytes.
	tls       bool
	mode      opcua.SecurityMode // opcua: the configured security_mode
	limits    opcua.Limits
	synthetic bool
}

// listenerSet matches flows to configured listeners by the flow's server
// address: a capture taken on the IT side shows the listener's listen
// address, one taken on the OT side its upstream address.
type listenerSet struct {
	exact map[netip.AddrPort]*listener // IP literal (or localhost) addresses
	port  map[uint16]*listener         // listen addresses with no or a wildcard host
	// notes are problems met while indexing (addresses that cannot be
	// matched without name resolution), for the report.
	notes []string
	// synth caches the synthetic listeners, one per protocol and server.
	synth map[synthKey]*listener
}

type synthKey struct {
	proto  string
	server netip.AddrPort
}

// newListenerSet indexes the listeners of cfg (nil: none).
func newListenerSet(cfg *config.Config) *listenerSet {
	s := &listenerSet{
		exact: map[netip.AddrPort]*listener{},
		port:  map[uint16]*listener{},
		synth: map[synthKey]*listener{},
	}
	if cfg == nil {
		return s
	}
	for i := range cfg.Listeners {
		l := &cfg.Listeners[i]
		base := listener{name: l.Name, protocol: l.Protocol, upstream: l.Upstream}
		if l.Protocol == config.ProtocolOPCUA {
			base.mode = opcua.SecurityModeNone
			if l.OPCUA != nil {
				if m, ok := opcua.ParseSecurityMode(l.OPCUA.SecurityMode); ok {
					base.mode = m
				}
				base.limits = opcua.Limits{
					MaxChunkSize:   l.OPCUA.MaxChunkSize,
					MaxMessageSize: l.OPCUA.MaxMessageSize,
					MaxChunkCount:  l.OPCUA.MaxChunkCount,
				}
			}
		}
		listen, up := base, base
		listen.tls = l.TLS != nil
		up.tls = l.UpstreamTLS != nil
		s.add(l.Name, "listen", l.Listen, &listen, true)
		s.add(l.Name, "upstream", l.Upstream, &up, false)
	}
	return s
}

// add indexes one address of a listener. The first listener to claim an
// address keeps it (configuration order).
func (s *listenerSet) add(name, field, hostport string, l *listener, wildcardOK bool) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		s.notes = append(s.notes, fmt.Sprintf("listener %s: %s %q: %v", name, field, hostport, err))
		return
	}
	p, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		s.notes = append(s.notes, fmt.Sprintf("listener %s: %s %q: bad port", name, field, hostport))
		return
	}
	port := uint16(p)
	var addrs []netip.Addr
	switch {
	case wildcardOK && (host == "" || host == "0.0.0.0" || host == "::"):
		if _, taken := s.port[port]; !taken {
			s.port[port] = l
		}
		return
	case strings.EqualFold(host, "localhost"):
		addrs = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	default:
		a, err := netip.ParseAddr(host)
		if err != nil {
			s.notes = append(s.notes, fmt.Sprintf("listener %s: %s %s is a host name: replay does not resolve names, so flows to it are not matched to this listener", name, field, hostport))
			return
		}
		addrs = []netip.Addr{a.Unmap()}
	}
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, port)
		if _, taken := s.exact[ap]; !taken {
			s.exact[ap] = l
		}
	}
}

// match returns the configured listener whose address is server, or nil.
func (s *listenerSet) match(server netip.AddrPort) *listener {
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	if l := s.exact[server]; l != nil {
		return l
	}
	return s.port[server.Port()]
}

// isServer tells capture.Reader which endpoint of a flow whose handshake was
// not captured is the server: a configured address or a well-known port.
func (s *listenerSet) isServer(ap netip.AddrPort) bool {
	switch ap.Port() {
	case portModbus, portMbaps, portOPCUA:
		return true
	}
	return s.match(ap) != nil
}

// synthetic returns the listener replay makes up for a server that no
// configured listener matches: one per protocol and server address, named
// "<protocol>-<address>-<port>" (a valid listener name: ':' of IPv6
// addresses becomes '_'), with the server address as upstream.
func (s *listenerSet) synthetic(proto string, server netip.AddrPort) *listener {
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	k := synthKey{proto, server}
	if l := s.synth[k]; l != nil {
		return l
	}
	l := &listener{
		name:      SyntheticListenerName(proto, server),
		protocol:  proto,
		upstream:  server.String(),
		synthetic: true,
	}
	if proto == inspect.ProtocolOPCUA {
		// Unknown: channels under SecurityPolicy None are read whatever
		// the mode; secured ones are taken as SignAndEncrypt (opaque),
		// since Sign cannot be told from it by the OPN alone.
		l.mode = opcua.SecurityModeSignAndEncrypt
	}
	s.synth[k] = l
	return l
}

// SyntheticListenerName is the listener name replay and learn use for a
// server that no configured listener matches, e.g.
// "modbus-192.168.1.10-502". Policy data for captures replayed without a
// configuration is keyed by these names.
func SyntheticListenerName(proto string, server netip.AddrPort) string {
	addr := strings.ReplaceAll(server.Addr().Unmap().String(), ":", "_")
	return proto + "-" + addr + "-" + strconv.Itoa(int(server.Port()))
}
