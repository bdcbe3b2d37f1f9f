package config

import (
	"path/filepath"
	"time"
)

// Defaults, in one place. docs/config.md repeats them for users.
const (
	DefaultDenyAction      = "exception"
	DefaultDenyException   = 0x01 // Modbus illegal function
	DefaultMaxConnections  = 256  // per listener
	DefaultMaxOutstanding  = 16   // per connection
	DefaultGlobalMaxConns  = 4096
	DefaultConnectTimeout  = 5 * time.Second
	DefaultResponseTimeout = 5 * time.Second
	DefaultIdleTimeout     = 5 * time.Minute
	DefaultHandshake       = 10 * time.Second
	DefaultDecisionTimeout = 100 * time.Millisecond
	MaxAuditReadDelay      = time.Second // audit.read_delay; its default is 0
	DefaultTLSMinVersion   = "1.3"
	DefaultOPCUAMode       = "none"
	DefaultOPCUAMaxMessage = 4 << 20  // 4 MiB after reassembly
	DefaultOPCUAMaxChunk   = 64 << 10 // 64 KiB per chunk
	DefaultOPCUAMaxChunks  = 128      // chunks per message
	DefaultLogLevel        = "info"
	DefaultLogFormat       = "json"
)

// Default returns a configuration with every global default set and no
// listeners.
func Default() *Config {
	return &Config{
		Policy: Policy{DecisionTimeout: Duration(DefaultDecisionTimeout)},
		Log:    Log{Level: DefaultLogLevel, Format: DefaultLogFormat},
		Limits: Limits{MaxConnections: DefaultGlobalMaxConns},
	}
}

// applyDefaults fills what the file left out. Zero means "not set" for every
// field that has a default; a field whose zero is meaningful (max_lifetime:
// 0, no limit) has none.
func (c *Config) applyDefaults() {
	if c.Policy.DecisionTimeout == 0 {
		c.Policy.DecisionTimeout = Duration(DefaultDecisionTimeout)
	}
	if c.Limits.MaxConnections == 0 {
		c.Limits.MaxConnections = DefaultGlobalMaxConns
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.Log.Format == "" {
		c.Log.Format = DefaultLogFormat
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.DenyAction == "" {
			l.DenyAction = DefaultDenyAction
		}
		if l.DenyException == 0 {
			l.DenyException = DefaultDenyException
		}
		if l.MaxConnections == 0 {
			l.MaxConnections = DefaultMaxConnections
		}
		if l.MaxOutstanding == 0 {
			l.MaxOutstanding = DefaultMaxOutstanding
		}
		t := &l.Timeouts
		setDefault(&t.Connect, DefaultConnectTimeout)
		setDefault(&t.Response, DefaultResponseTimeout)
		setDefault(&t.Idle, DefaultIdleTimeout)
		setDefault(&t.Handshake, DefaultHandshake)
		if l.TLS != nil && l.TLS.MinVersion == "" {
			l.TLS.MinVersion = DefaultTLSMinVersion
		}
		if l.UpstreamTLS != nil && l.UpstreamTLS.MinVersion == "" {
			l.UpstreamTLS.MinVersion = DefaultTLSMinVersion
		}
		if l.Protocol == ProtocolOPCUA {
			if l.OPCUA == nil {
				l.OPCUA = &OPCUA{}
			}
			o := l.OPCUA
			if o.SecurityMode == "" {
				o.SecurityMode = DefaultOPCUAMode
			}
			if o.EndpointURL == "" {
				o.EndpointURL = "opc.tcp://" + l.Listen
			}
			if o.MaxMessageSize == 0 {
				o.MaxMessageSize = DefaultOPCUAMaxMessage
			}
			if o.MaxChunkSize == 0 {
				o.MaxChunkSize = DefaultOPCUAMaxChunk
			}
			if o.MaxChunkCount == 0 {
				o.MaxChunkCount = DefaultOPCUAMaxChunks
			}
		}
	}
}

func setDefault(d *Duration, v time.Duration) {
	if *d == 0 {
		*d = Duration(v)
	}
}

// resolvePaths makes every file path relative to the configuration file's
// directory.
func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Policy.Path)
	abs(&c.Audit.File)
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if t := l.TLS; t != nil {
			abs(&t.CertFile)
			abs(&t.KeyFile)
			abs(&t.ClientCAFile)
			abs(&t.CRLFile)
			if s := t.StepCA; s != nil {
				abs(&s.TokenFile)
				abs(&s.Dir)
			}
		}
		if u := l.UpstreamTLS; u != nil {
			abs(&u.CertFile)
			abs(&u.KeyFile)
			abs(&u.CAFile)
		}
	}
}
