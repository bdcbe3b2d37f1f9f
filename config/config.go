// Package config reads and validates Conduit's YAML configuration.
//
// Load turns a file into an immutable, validated Config: defaults first, then
// the file, then validation. Every error names the file, the line and the
// field (e.g. `conduit.yaml:7: listeners[0].upstream: missing port in
// address`), unknown keys are errors, and relative paths are resolved against
// the directory of the configuration file so that `conduit run` behaves the
// same from any working directory. docs/config.md is the user-facing
// reference; keep the two in step.
package config

import (
	"time"
)

// Protocols a listener may speak.
const (
	ProtocolModbus = "modbus"
	ProtocolOPCUA  = "opcua"
)

// Config is the whole configuration. Treat it as read-only after Load.
type Config struct {
	// File is the path the configuration was loaded from ("" for the
	// embedded demo configuration).
	File string `yaml:"-"`

	Listeners []Listener `yaml:"listeners"`
	Policy    Policy     `yaml:"policy"`
	Audit     Audit      `yaml:"audit"`
	Log       Log        `yaml:"log"`
	Limits    Limits     `yaml:"limits"`
	Metrics   Metrics    `yaml:"metrics"`
}

// Listener is one protected path: a local address the IT side connects to,
// and the OT device behind it.
type Listener struct {
	Name     string `yaml:"name"`     // appears in policy input and audit events
	Protocol string `yaml:"protocol"` // "modbus" or "opcua"
	Listen   string `yaml:"listen"`   // host:port to accept on
	Upstream string `yaml:"upstream"` // host:port of the device

	// DenyAction is what a denied request gets when the policy does not
	// choose: "exception" (Modbus exception / OPC UA ServiceFault, the
	// connection lives on), "reset" (TCP reset) or "drop" (no answer).
	DenyAction string `yaml:"deny_action"`
	// DenyException is the Modbus exception code sent for a deny when the
	// policy does not choose one (default 0x01, illegal function).
	DenyException uint8 `yaml:"deny_exception"`

	MaxConnections int `yaml:"max_connections"` // concurrent clients on this listener
	MaxOutstanding int `yaml:"max_outstanding"` // requests in flight per connection

	Timeouts Timeouts `yaml:"timeouts"`

	TLS         *TLS         `yaml:"tls"`          // mTLS toward the IT side
	UpstreamTLS *UpstreamTLS `yaml:"upstream_tls"` // TLS toward the device
	OPCUA       *OPCUA       `yaml:"opcua"`        // protocol: opcua only
}

// Timeouts bound every wait of a connection.
type Timeouts struct {
	Connect   Duration `yaml:"connect"`   // dialing the device
	Response  Duration `yaml:"response"`  // device answer to one request
	Idle      Duration `yaml:"idle"`      // no request from the client
	Handshake Duration `yaml:"handshake"` // TLS handshake (and OPC UA HEL)
	// MaxLifetime closes a connection after this long, however busy
	// (0: no limit).
	MaxLifetime Duration `yaml:"max_lifetime"`
}

// TLS configures the IT-side TLS listener. With TLS set, a client
// certificate issued by ClientCAFile is required and verified before one byte
// reaches the device.
type TLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
	CRLFile      string `yaml:"crl_file"`
	// MinVersion is "1.3" (default) or "1.2".
	MinVersion string `yaml:"min_version"`
	// StepCA obtains and renews the server certificate from a step-ca
	// instead of CertFile/KeyFile.
	StepCA *StepCA `yaml:"step_ca"`
}

// StepCA is a step-ca (smallstep) certificate source for a listener.
type StepCA struct {
	URL             string `yaml:"url"`              // https://ca.example:9000
	RootFingerprint string `yaml:"root_fingerprint"` // SHA-256 of the root, hex
	// TokenFile holds a one-time token for a JWK provisioner, used once to
	// obtain the first certificate; renewals use the current certificate.
	TokenFile string `yaml:"token_file"`
	// Dir stores the obtained certificate and key so a restart does not
	// need a new token.
	Dir string `yaml:"dir"`
}

// UpstreamTLS configures TLS toward a device that speaks Modbus/TCP Security
// itself.
type UpstreamTLS struct {
	CertFile   string `yaml:"cert_file"` // client certificate presented to the device
	KeyFile    string `yaml:"key_file"`
	CAFile     string `yaml:"ca_file"`     // verifies the device
	ServerName string `yaml:"server_name"` // expected name in the device certificate
	MinVersion string `yaml:"min_version"` // "1.3" (default) or "1.2"
}

// OPCUA holds the settings of an opcua listener.
type OPCUA struct {
	// SecurityMode is the message security mode the channels through this
	// listener use: "none", "sign" or "sign_and_encrypt". It decides what
	// the proxy can inspect and how it enforces (docs/config.md).
	SecurityMode string `yaml:"security_mode"`
	// EndpointURL is the URL clients use to reach the proxy; endpoint URLs
	// in GetEndpoints and CreateSession responses are rewritten to it
	// (security mode none only). Default: opc.tcp://<listen>.
	EndpointURL string `yaml:"endpoint_url"`

	MaxMessageSize uint32 `yaml:"max_message_size"` // bytes, after reassembly
	MaxChunkSize   uint32 `yaml:"max_chunk_size"`   // bytes, one chunk
	MaxChunkCount  uint32 `yaml:"max_chunk_count"`  // chunks per message
}

// Policy configures the policy engine.
type Policy struct {
	// Path is a directory of .rego and .json files, or an OPA bundle
	// (.tar.gz).
	Path string `yaml:"path"`
	// DryRun (monitor mode) evaluates and audits every decision and
	// forwards the reads the policy denies; denied writes and every other
	// operation stay denied. For rollout only.
	DryRun bool `yaml:"dry_run"`
	// DecisionTimeout bounds one evaluation; a timeout is a deny.
	DecisionTimeout Duration `yaml:"decision_timeout"`
	// Watch reloads the policy when its files change (SIGHUP always does).
	Watch *bool `yaml:"watch"`
	// RunTests runs the policy's own Rego tests before accepting a new
	// version; a failing test refuses it.
	RunTests *bool `yaml:"run_tests"`
}

// Audit configures the audit trail.
type Audit struct {
	File string `yaml:"file"` // JSON lines, appended
	// Fsync also flushes every batch to stable storage (fdatasync), not
	// only to the operating system.
	Fsync bool `yaml:"fsync"`
	// Stdout copies every event to standard output.
	Stdout bool `yaml:"stdout"`
	// ReadDelay lets an allowed read be forwarded before its event is
	// written: the event goes to the file with the next event that is
	// waited for, or at the latest ReadDelay later. 0 (the default):
	// every allowed operation waits for its event's write. Allowed writes
	// (and every operation that is not a read) and denials always wait.
	ReadDelay Duration `yaml:"read_delay"`
}

// Log configures the operational log (not the audit trail).
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json or console
}

// Limits apply across all listeners.
type Limits struct {
	MaxConnections int `yaml:"max_connections"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	Listen string `yaml:"listen"` // host:port; empty disables
}

// Duration is a time.Duration written with a unit in YAML ("5s", "250ms").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// WatchEnabled reports whether policy files are watched (default true).
func (p Policy) WatchEnabled() bool { return p.Watch == nil || *p.Watch }

// TestsEnabled reports whether a new policy's Rego tests gate it (default
// true).
func (p Policy) TestsEnabled() bool { return p.RunTests == nil || *p.RunTests }
