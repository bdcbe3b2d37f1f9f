package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/conduit-ot/conduit/config"
)

// ClientOptions describe the client side of an mTLS connection: the proxy
// dialing a Modbus/TCP Security device (upstream_tls), or `conduit connect`
// dialing the proxy.
type ClientOptions struct {
	CertFile string // client certificate, with its intermediates
	KeyFile  string // unencrypted private key
	CAFile   string // roots that verify the server
	// ServerName is the name expected in the server certificate. Empty:
	// the host of the address passed to Config.
	ServerName string
	MinVersion string // "1.3" (default) or "1.2"
}

// ClientTLS holds client-side TLS material that Reload swaps atomically;
// connections already established keep theirs.
type ClientTLS struct {
	opts       ClientOptions
	minVersion uint16
	mu         sync.Mutex
	cur        atomic.Pointer[tls.Config]
}

// NewUpstreamTLS builds the client TLS of a listener's upstream_tls section.
func NewUpstreamTLS(u *config.UpstreamTLS) (*ClientTLS, error) {
	if u == nil {
		return nil, errors.New("pki: no upstream_tls configuration")
	}
	return NewClientTLS(ClientOptions{
		CertFile: u.CertFile, KeyFile: u.KeyFile, CAFile: u.CAFile,
		ServerName: u.ServerName, MinVersion: u.MinVersion,
	})
}

// NewClientTLS loads the client certificate, key and CA bundle.
func NewClientTLS(o ClientOptions) (*ClientTLS, error) {
	mv, err := ParseTLSVersion(o.MinVersion)
	if err != nil {
		return nil, err
	}
	if o.CertFile == "" || o.KeyFile == "" {
		return nil, errors.New("pki: a client certificate and key are required (the server requires mutual TLS)")
	}
	if o.CAFile == "" {
		return nil, errors.New("pki: a CA file is required to verify the server")
	}
	c := &ClientTLS{opts: o, minVersion: mv}
	cfg, err := c.build()
	if err != nil {
		return nil, err
	}
	c.cur.Store(cfg)
	return c, nil
}

func (c *ClientTLS) build() (*tls.Config, error) {
	cert, err := LoadKeyPair(c.opts.CertFile, c.opts.KeyFile)
	if err != nil {
		return nil, err
	}
	if len(cert.Leaf.ExtKeyUsage) > 0 && !hasEKU(cert.Leaf, x509.ExtKeyUsageClientAuth) {
		return nil, fmt.Errorf("pki: %s is not a client certificate (no ExtKeyUsage clientAuth)", c.opts.CertFile)
	}
	cas, err := ReadCerts(c.opts.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	return &tls.Config{
		MinVersion:   c.minVersion,
		Certificates: []tls.Certificate{*cert},
		RootCAs:      pool,
		ServerName:   c.opts.ServerName,
	}, nil
}

// Config returns the tls.Config to dial addr (host:port) with. With no
// ServerName configured, the server certificate must name the host of
// addr. Do not modify the result.
func (c *ClientTLS) Config(addr string) *tls.Config {
	cfg := c.cur.Load()
	if cfg.ServerName != "" {
		return cfg
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	cp := cfg.Clone()
	cp.ServerName = host
	return cp
}

// Reload rereads the files; on error the previous material stays.
func (c *ClientTLS) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg, err := c.build()
	if err != nil {
		return err
	}
	c.cur.Store(cfg)
	return nil
}

// Leaf returns the client certificate currently presented.
func (c *ClientTLS) Leaf() *x509.Certificate { return c.cur.Load().Certificates[0].Leaf }
