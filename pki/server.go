package pki

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/conduit-ot/conduit/config"
)

// CertSource supplies the server certificate at each handshake. A
// *StepCASource is one; the files of config.TLS are the other.
type CertSource interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// ServerOptions tune a ServerTLS. The zero value is production-ready.
type ServerOptions struct {
	Logger *slog.Logger // nil: discard
	// NoWatch disables reloading on file changes (Reload still works).
	NoWatch bool
	// Debounce is the quiet time after the last file event before a
	// reload (editors and `cp` write in several steps). Default 250ms.
	Debounce time.Duration
	// CertSource overrides cert_file/key_file and step_ca.
	CertSource CertSource
	// StepCA tunes the step-ca source built when config.TLS.StepCA is set.
	StepCA StepCAOptions
	// OnReject is called, from the handshake goroutine, for every refused
	// client certificate (in addition to the error Handshake returns).
	OnReject func(*HandshakeError)
	// OnReload is called after every reload that changed material or
	// failed (audit: certificate-reload).
	OnReload func(ReloadResult)
	// Now is the clock for validity and CRL checks (tests). Default time.Now.
	Now func() time.Time
}

// ReloadResult describes one reload.
type ReloadResult struct {
	Changed []string // "certificate", "client_ca", "crl": what was swapped in
	Err     error    // what was refused (the old material stays), nil if all good
}

// Material names in ReloadResult.Changed.
const (
	MaterialCertificate = "certificate"
	MaterialClientCA    = "client_ca"
	MaterialCRL         = "crl"
)

// ServerTLS is the TLS side of one listener: the server certificate, the
// client CA bundle and the CRL, swapped atomically on reload. Every
// handshake takes one consistent version through GetConfigForClient;
// established connections are rechecked when the client CA bundle or the
// CRL changes (OnTrustChange, Recheck).
type ServerTLS struct {
	cfg        config.TLS
	minVersion uint16
	opts       ServerOptions
	log        *slog.Logger
	now        func() time.Time

	source      CertSource // nil: cert_file/key_file
	ownedSource io.Closer  // closed by Close (the step-ca source we built)

	mu      sync.Mutex // serializes reloads
	lastErr string     // of the last reload, guarded by mu
	cur     atomic.Pointer[serverState]

	// trustGen counts the reloads that swapped in a new client CA bundle
	// or CRL; onTrust are called after each (OnTrustChange).
	trustGen atomic.Uint64
	hooksMu  sync.Mutex
	onTrust  []func()

	base    *tls.Config
	watcher *watcher
	closed  sync.Once
}

// serverState is one immutable version of the material.
type serverState struct {
	config   *tls.Config
	cert     *tls.Certificate // nil with a CertSource
	verifier *clientVerifier

	certPEM, keyPEM, caPEM, crlPEM []byte
	cas                            []*x509.Certificate
	crls                           []*x509.RevocationList
}

// NewServerTLS loads the material of a listener's tls section and, unless
// opts.NoWatch, watches its files. With step_ca it obtains (or loads the
// persisted) server certificate first, which may contact the CA. Every file
// must load: there is no old material to fall back on.
func NewServerTLS(ctx context.Context, cfg *config.TLS, opts ServerOptions) (*ServerTLS, error) {
	if cfg == nil {
		return nil, errors.New("pki: no tls configuration")
	}
	mv, err := ParseTLSVersion(cfg.MinVersion)
	if err != nil {
		return nil, err
	}
	if cfg.ClientCAFile == "" {
		return nil, errors.New("pki: tls.client_ca_file is required: every client must present a certificate")
	}
	s := &ServerTLS{cfg: *cfg, minVersion: mv, opts: opts, log: opts.Logger, now: opts.Now}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	switch {
	case opts.CertSource != nil:
		s.source = opts.CertSource
	case cfg.StepCA != nil:
		so := opts.StepCA
		if so.Logger == nil {
			so.Logger = s.log
		}
		if opts.OnReload != nil {
			// A renewal is a certificate reload for the audit trail.
			onRenew := so.OnRenew
			so.OnRenew = func(leaf *x509.Certificate, err error) {
				if onRenew != nil {
					onRenew(leaf, err)
				}
				r := ReloadResult{Err: err}
				if err == nil {
					r.Changed = []string{MaterialCertificate}
				}
				opts.OnReload(r)
			}
		}
		src, err := NewStepCASource(ctx, cfg.StepCA, so)
		if err != nil {
			return nil, err
		}
		s.source, s.ownedSource = src, src
	case cfg.CertFile == "" || cfg.KeyFile == "":
		return nil, errors.New("pki: tls.cert_file and tls.key_file are required (or tls.step_ca)")
	}
	st, _, err := s.load(nil)
	if err != nil {
		s.closeSource()
		return nil, err
	}
	s.cur.Store(st)
	s.base = &tls.Config{
		MinVersion: mv,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.cur.Load().config, nil
		},
	}
	if !opts.NoWatch {
		files := []string{cfg.ClientCAFile, cfg.CRLFile}
		if s.source == nil {
			files = append(files, cfg.CertFile, cfg.KeyFile)
		}
		w, err := newWatcher(files, opts.Debounce, s.log, func() { s.Reload() })
		if err != nil {
			s.closeSource()
			return nil, err
		}
		s.watcher = w
	}
	return s, nil
}

// Config returns the tls.Config for the listener (tls.NewListener,
// tls.Server). It is constant; the material behind it changes on reload.
// Do not modify it.
func (s *ServerTLS) Config() *tls.Config { return s.base }

// Reload rereads the certificate, key, client CA bundle and CRL (on SIGHUP;
// file changes trigger it too). Each piece that fails to load keeps its
// previous version and the error says why; the pieces that load are swapped
// in. Established connections are left to the OnTrustChange callbacks.
func (s *ServerTLS) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Load()
	st, changed, err := s.load(old)
	if st != nil && len(changed) > 0 {
		s.cur.Store(st)
		if slices.Contains(changed, MaterialClientCA) || slices.Contains(changed, MaterialCRL) {
			s.trustGen.Add(1)
			s.hooksMu.Lock()
			hooks := slices.Clone(s.onTrust)
			s.hooksMu.Unlock()
			for _, f := range hooks {
				f()
			}
		}
	}
	// A bad file is reported once, not at every file event or SIGHUP
	// until it is fixed; the error is still returned every time.
	repeat := err != nil && len(changed) == 0 && err.Error() == s.lastErr
	if err != nil {
		s.lastErr = err.Error()
	} else {
		s.lastErr = ""
	}
	if (len(changed) > 0 || err != nil) && !repeat {
		if err != nil {
			s.log.Error("TLS reload refused a file; the previous material stays", "err", err, "changed", changed)
		} else {
			s.log.Info("TLS material reloaded", "changed", changed)
		}
		if s.opts.OnReload != nil {
			s.opts.OnReload(ReloadResult{Changed: changed, Err: err})
		}
	}
	return err
}

// OnTrustChange registers f to be called after every reload that swapped in
// a new client CA bundle or CRL, before Reload returns (and before the
// OnReload callback), so that whoever holds established connections can
// Recheck them: a revocation cuts the connections of that certificate.
// f must not call Reload.
func (s *ServerTLS) OnTrustChange(f func()) {
	s.hooksMu.Lock()
	s.onTrust = append(s.onTrust, f)
	s.hooksMu.Unlock()
}

// TrustGeneration counts the reloads that changed the client CA bundle or
// the CRL. A connection whose handshake began under an older generation
// than the one current once it is registered must be rechecked: the
// OnTrustChange call may have missed it.
func (s *ServerTLS) TrustGeneration() uint64 { return s.trustGen.Load() }

// Recheck verifies a chain that a client presented in a handshake made at
// `at` against the current client CA bundle and CRL, with validity periods
// and the CRL's next update judged at `at`: what fails is what a reload
// withdrew (a revocation, a CA taken out of the bundle, an issuer whose CRL
// is no longer in crl_file), not the passing of time. nil: still trusted;
// else a *HandshakeError with its Reason.
func (s *ServerTLS) Recheck(chain []*x509.Certificate, at time.Time) error {
	if he := s.cur.Load().verifier.verifyAt(chain, at); he != nil {
		return he
	}
	return nil
}

// Close stops the file watcher and the step-ca renewal it started.
// Connections are not affected.
func (s *ServerTLS) Close() error {
	s.closed.Do(func() {
		if s.watcher != nil {
			s.watcher.close()
		}
		s.closeSource()
	})
	return nil
}

func (s *ServerTLS) closeSource() {
	if s.ownedSource != nil {
		s.ownedSource.Close()
	}
}

// Leaf returns the server certificate currently served (for logs and
// tests).
func (s *ServerTLS) Leaf() (*x509.Certificate, error) {
	c, err := s.cur.Load().config.GetCertificate(nil)
	if err != nil {
		return nil, err
	}
	return c.Leaf, nil
}

// load builds a new state from the files, reusing from old each piece whose
// bytes did not change or that fails to load (old == nil: everything must
// load).
func (s *ServerTLS) load(old *serverState) (*serverState, []string, error) {
	st := &serverState{}
	if old != nil {
		*st = *old
	}
	var changed []string
	var errs []error
	keep := func(what string, err error) {
		errs = append(errs, fmt.Errorf("%s: %w", what, err))
	}

	if s.source == nil {
		certPEM, err1 := ReadMaterial(s.cfg.CertFile)
		keyPEM, err2 := ReadMaterial(s.cfg.KeyFile)
		switch {
		case err1 != nil || err2 != nil:
			keep(MaterialCertificate, errors.Join(err1, err2))
		case old != nil && bytes.Equal(certPEM, old.certPEM) && bytes.Equal(keyPEM, old.keyPEM):
		default:
			c, err := parseKeyPair(certPEM, keyPEM, s.cfg.CertFile, s.cfg.KeyFile)
			if err == nil && s.now().After(c.Leaf.NotAfter) {
				err = fmt.Errorf("pki: %s expired at %s", s.cfg.CertFile, c.Leaf.NotAfter.UTC().Format(time.RFC3339))
			}
			if err == nil && !hasEKU(c.Leaf, x509.ExtKeyUsageServerAuth) && len(c.Leaf.ExtKeyUsage) > 0 {
				err = fmt.Errorf("pki: %s is not a server certificate (no ExtKeyUsage serverAuth)", s.cfg.CertFile)
			}
			if err != nil {
				keep(MaterialCertificate, err)
			} else {
				st.cert, st.certPEM, st.keyPEM = c, certPEM, keyPEM
				changed = append(changed, MaterialCertificate)
			}
		}
	}

	caChanged := false
	if caPEM, err := ReadMaterial(s.cfg.ClientCAFile); err != nil {
		keep(MaterialClientCA, err)
	} else if old == nil || !bytes.Equal(caPEM, old.caPEM) {
		cas, err := ParseCerts(caPEM)
		if err == nil {
			_, err = newClientVerifier(cas, nil, false, s.now)
		}
		if err != nil {
			keep(MaterialClientCA, fmt.Errorf("%s: %w", s.cfg.ClientCAFile, err))
		} else {
			st.cas, st.caPEM = cas, caPEM
			caChanged = true
			changed = append(changed, MaterialClientCA)
		}
	}

	crlChanged := false
	if s.cfg.CRLFile != "" {
		if crlPEM, err := ReadMaterial(s.cfg.CRLFile); err != nil {
			keep(MaterialCRL, err)
		} else if old == nil || !bytes.Equal(crlPEM, old.crlPEM) {
			crls, err := ParseCRLs(crlPEM)
			if err == nil && len(st.cas) > 0 {
				// Check the signature against the bundle now, so a bad
				// file is refused here rather than at each handshake.
				_, err = newClientVerifier(st.cas, crls, true, s.now)
			}
			if err != nil {
				keep(MaterialCRL, fmt.Errorf("%s: %w", s.cfg.CRLFile, err))
			} else {
				st.crls, st.crlPEM = crls, crlPEM
				crlChanged = true
				changed = append(changed, MaterialCRL)
			}
		}
	}

	err := errors.Join(errs...)
	if old == nil && err != nil {
		return nil, nil, err
	}
	if len(changed) == 0 {
		return old, nil, err
	}
	if caChanged || crlChanged || st.verifier == nil {
		v, verr := newClientVerifier(st.cas, st.crls, s.cfg.CRLFile != "", s.now)
		if verr != nil {
			// A new bundle whose CA of the same name did not sign the CRL
			// we keep: refuse the bundle and the CRL change, keep any new
			// server certificate.
			if old == nil {
				return nil, nil, verr
			}
			err = errors.Join(err, fmt.Errorf("%s: %w", MaterialClientCA, verr))
			st.cas, st.caPEM, st.crls, st.crlPEM, st.verifier = old.cas, old.caPEM, old.crls, old.crlPEM, old.verifier
			changed = slices.DeleteFunc(changed, func(m string) bool { return m != MaterialCertificate })
			if len(changed) == 0 {
				return old, nil, err
			}
		} else {
			st.verifier = v
		}
	}
	st.config = s.buildConfig(st)
	return st, changed, err
}

// buildConfig is the tls.Config of one state. Built once per reload, not
// per handshake.
func (s *ServerTLS) buildConfig(st *serverState) *tls.Config {
	v := st.verifier
	pool := x509.NewCertPool()
	for _, c := range st.cas {
		pool.AddCert(c)
	}
	c := &tls.Config{
		MinVersion: s.minVersion,
		// RequestClientCert, not RequireAndVerifyClientCert: the
		// verification is ours (VerifyConnection) so that each refusal
		// carries a Reason, including "no certificate at all". ClientCAs
		// still goes into the CertificateRequest so clients pick the
		// right certificate.
		ClientAuth: tls.RequestClientCert,
		ClientCAs:  pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if he := v.verify(cs.PeerCertificates); he != nil {
				if s.opts.OnReject != nil {
					s.opts.OnReject(he)
				}
				return he
			}
			return nil
		},
		// No resumption: every connection is verified in full against the
		// current CA bundle and CRL, and an OT client reconnects rarely.
		SessionTicketsDisabled: true,
	}
	if s.source != nil {
		c.GetCertificate = s.source.GetCertificate
	} else {
		cert := st.cert
		c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return c
}

// IdentityFromConnectionState returns the Identity of the client of a
// connection whose handshake completed with ServerTLS.Config (the chain was
// verified during the handshake; this only reads it).
func IdentityFromConnectionState(cs tls.ConnectionState) (*Identity, error) {
	if !cs.HandshakeComplete {
		return nil, errors.New("pki: the TLS handshake has not completed")
	}
	if len(cs.PeerCertificates) == 0 {
		return nil, &HandshakeError{Reason: ReasonNoClientCert, Err: errors.New("no client certificate")}
	}
	id, err := IdentityFromCertificate(cs.PeerCertificates[0])
	if err != nil {
		return nil, &HandshakeError{Reason: ReasonBadRoleExtension, Err: err}
	}
	return id, nil
}
