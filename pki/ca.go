package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"go.step.sm/crypto/x509util"
)

// Files of a CA directory created by InitCA. docs/pki.md describes them for
// operators.
const (
	FileCAConfig         = "ca.json"             // name, key type, defaults
	FileRootCert         = "root_ca.crt"         // trust anchor: client_ca_file, connect --ca
	FileRootKey          = "root_ca.key"         // 0600; only needed to sign a new intermediate
	FileIntermediateCert = "intermediate_ca.crt" // issues leaves and the CRL
	FileIntermediateKey  = "intermediate_ca.key" // 0600
	FileIndex            = "index.json"          // issued certificates and revocations
	FileCRL              = "crl.pem"             // crl_file of the proxy
	DirIssued            = "certs"               // NAME.crt, NAME.key, NAME.chain.crt
	fileLock             = ".lock"
)

// Defaults for InitCA and Issue.
const (
	DefaultCAName               = "Conduit"
	DefaultRootValidity         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateValidity = 5 * 365 * 24 * time.Hour
	DefaultLeafValidity         = 365 * 24 * time.Hour
	DefaultCRLNextUpdate        = 30 * 24 * time.Hour
	// leafBackdate covers small clock differences between the CA host and
	// the proxy: a certificate valid "from now" would be refused as
	// not_yet_valid by a proxy whose clock is a few seconds behind.
	leafBackdate = time.Minute
)

// Certificate types issued by the local CA.
type CertType string

const (
	CertServer CertType = "server" // ExtKeyUsage serverAuth
	CertClient CertType = "client" // ExtKeyUsage clientAuth, optional Modbus role
)

// Leaf templates (go.step.sm/crypto/x509util). Unlike step's default leaf
// template, each grants one extended key usage: a client certificate must
// not be usable to impersonate the proxy, and the reverse.
const (
	serverTemplate = `{
	"subject": {{ toJson .Subject }},
	"sans": {{ toJson .SANs }},
{{- if typeIs "*rsa.PublicKey" .Insecure.CR.PublicKey }}
	"keyUsage": ["keyEncipherment", "digitalSignature"],
{{- else }}
	"keyUsage": ["digitalSignature"],
{{- end }}
	"extKeyUsage": ["serverAuth"]
}`
	clientTemplate = `{
	"subject": {{ toJson .Subject }},
	"sans": {{ toJson .SANs }},
{{- if .ModbusRole }}
	"extensions": [{"id": "1.3.6.1.4.1.50316.802.1", "critical": false, "value": {{ toJson .ModbusRole }}}],
{{- end }}
{{- if typeIs "*rsa.PublicKey" .Insecure.CR.PublicKey }}
	"keyUsage": ["keyEncipherment", "digitalSignature"],
{{- else }}
	"keyUsage": ["digitalSignature"],
{{- end }}
	"extKeyUsage": ["clientAuth"]
}`
)

// caMeta is ca.json: written once by InitCA.
type caMeta struct {
	Version       int       `json:"version"`
	Name          string    `json:"name"`
	Key           string    `json:"key"`
	Created       time.Time `json:"created"`
	CRLNextUpdate string    `json:"crl_next_update"` // time.Duration string
	Encrypted     bool      `json:"keys_encrypted"`
}

// InitOptions configure a new CA.
type InitOptions struct {
	Name                 string        // subject prefix: "<Name> Root CA", "<Name> Intermediate CA"
	Key                  KeySpec       // root and intermediate keys; default ECDSA P-256
	Password             []byte        // encrypts both CA keys when set
	RootValidity         time.Duration // default 10 years
	IntermediateValidity time.Duration // default 5 years
	CRLNextUpdate        time.Duration // default next-update of CRLs; 30 days
}

// CA is a local two-tier certificate authority kept in a directory.
type CA struct {
	Dir          string
	Name         string
	Root         *x509.Certificate
	Intermediate *x509.Certificate

	password      []byte
	crlNextUpdate time.Duration
	encrypted     bool
	now           func() time.Time
}

// ErrCAExists is returned by InitCA when the directory already holds a CA.
var ErrCAExists = errors.New("pki: a CA already exists in this directory")

// InitCA creates a root and an intermediate CA in dir (created 0700), an
// empty index and an empty CRL. It refuses to touch a directory that already
// holds any CA file.
func InitCA(dir string, opts InitOptions) (*CA, error) {
	if opts.Name == "" {
		opts.Name = DefaultCAName
	}
	if opts.RootValidity <= 0 {
		opts.RootValidity = DefaultRootValidity
	}
	if opts.IntermediateValidity <= 0 {
		opts.IntermediateValidity = DefaultIntermediateValidity
	}
	if opts.IntermediateValidity > opts.RootValidity {
		return nil, fmt.Errorf("pki: intermediate validity %s exceeds root validity %s", opts.IntermediateValidity, opts.RootValidity)
	}
	if opts.CRLNextUpdate <= 0 {
		opts.CRLNextUpdate = DefaultCRLNextUpdate
	}
	spec, err := opts.Key.normalize()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, ModeCADir); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone; the keys are
	// 0600 regardless, but the listing of issued names is not public either.
	if err := os.Chmod(dir, ModeCADir); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	for _, f := range []string{FileCAConfig, FileRootCert, FileRootKey, FileIntermediateCert, FileIntermediateKey, FileIndex, FileCRL} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return nil, fmt.Errorf("%w: %s", ErrCAExists, filepath.Join(dir, f))
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pki: %w", err)
		}
	}

	now := time.Now().Truncate(time.Second)
	rootKey, err := GenerateKey(spec)
	if err != nil {
		return nil, err
	}
	rootSubject := opts.Name + " Root CA"
	root, err := signFromTemplate(rootKey, rootSubject, x509util.DefaultRootTemplate, nil,
		now.Add(-leafBackdate), now.Add(opts.RootValidity), nil, rootKey)
	if err != nil {
		return nil, fmt.Errorf("pki: root certificate: %w", err)
	}
	intKey, err := GenerateKey(spec)
	if err != nil {
		return nil, err
	}
	intSubject := opts.Name + " Intermediate CA"
	inter, err := signFromTemplate(intKey, intSubject, x509util.DefaultIntermediateTemplate, nil,
		now.Add(-leafBackdate), now.Add(opts.IntermediateValidity), root, rootKey)
	if err != nil {
		return nil, fmt.Errorf("pki: intermediate certificate: %w", err)
	}

	rootKeyPEM, err := EncodeKey(rootKey, opts.Password)
	if err != nil {
		return nil, err
	}
	intKeyPEM, err := EncodeKey(intKey, opts.Password)
	if err != nil {
		return nil, err
	}
	meta := caMeta{
		Version: 1, Name: opts.Name, Key: spec.String(), Created: now,
		CRLNextUpdate: opts.CRLNextUpdate.String(), Encrypted: len(opts.Password) > 0,
	}
	metaJSON, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	// Keys first, ca.json last: a CA directory without ca.json is an
	// interrupted init, and OpenCA says so instead of half-working.
	writes := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{FileRootKey, rootKeyPEM, ModePrivateKey},
		{FileIntermediateKey, intKeyPEM, ModePrivateKey},
		{FileRootCert, EncodeCerts(root), ModePublic},
		{FileIntermediateCert, EncodeCerts(inter), ModePublic},
		{FileCAConfig, append(metaJSON, '\n'), ModePublic},
	}
	for _, w := range writes {
		if err := WriteFileAtomic(filepath.Join(dir, w.name), w.data, w.mode); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, DirIssued), ModeCADir); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	ca := &CA{
		Dir: dir, Name: opts.Name, Root: root, Intermediate: inter,
		password: opts.Password, crlNextUpdate: opts.CRLNextUpdate,
		encrypted: meta.Encrypted, now: time.Now,
	}
	idx := &Index{Version: 1}
	if err := ca.writeIndex(idx); err != nil {
		return nil, err
	}
	if _, err := ca.writeCRL(idx, opts.CRLNextUpdate, intKey); err != nil {
		return nil, err
	}
	return ca, nil
}

// OpenCA opens the CA in dir. password decrypts the intermediate key when
// the CA keys are encrypted; it is needed only by operations that sign
// (Issue, Revoke, GenerateCRL), so List works without it.
func OpenCA(dir string, password []byte) (*CA, error) {
	b, err := os.ReadFile(filepath.Join(dir, FileCAConfig))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pki: %s is not a CA directory (no %s; run `conduit pki init --dir %s`)", dir, FileCAConfig, dir)
		}
		return nil, fmt.Errorf("pki: %w", err)
	}
	var meta caMeta
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("pki: %s: %w", filepath.Join(dir, FileCAConfig), err)
	}
	if meta.Version != 1 {
		return nil, fmt.Errorf("pki: %s: unsupported version %d", filepath.Join(dir, FileCAConfig), meta.Version)
	}
	nu, err := time.ParseDuration(meta.CRLNextUpdate)
	if err != nil || nu <= 0 {
		nu = DefaultCRLNextUpdate
	}
	root, err := readOne(filepath.Join(dir, FileRootCert))
	if err != nil {
		return nil, err
	}
	inter, err := readOne(filepath.Join(dir, FileIntermediateCert))
	if err != nil {
		return nil, err
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("pki: %s is not signed by %s: %w", FileIntermediateCert, FileRootCert, err)
	}
	return &CA{
		Dir: dir, Name: meta.Name, Root: root, Intermediate: inter,
		password: password, crlNextUpdate: nu, encrypted: meta.Encrypted, now: time.Now,
	}, nil
}

func readOne(path string) (*x509.Certificate, error) {
	certs, err := ReadCerts(path)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("pki: %s: want one certificate, found %d", path, len(certs))
	}
	return certs[0], nil
}

// CRLNextUpdate is the default next-update interval of this CA's CRLs.
func (ca *CA) CRLNextUpdate() time.Duration { return ca.crlNextUpdate }

// KeysEncrypted reports whether the CA keys are passphrase-protected.
func (ca *CA) KeysEncrypted() bool { return ca.encrypted }

// signer decrypts the intermediate key and checks it belongs to the
// intermediate certificate.
func (ca *CA) signer() (crypto.Signer, error) {
	k, err := ReadKey(filepath.Join(ca.Dir, FileIntermediateKey), ca.password)
	if err != nil {
		if errors.Is(err, ErrKeyEncrypted) {
			return nil, fmt.Errorf("pki: the keys of the CA in %s are encrypted; give the passphrase (--password-file): %w", ca.Dir, ErrKeyEncrypted)
		}
		return nil, err
	}
	if !publicKeysEqual(k.Public(), ca.Intermediate.PublicKey) {
		return nil, fmt.Errorf("pki: %s does not match %s", FileIntermediateKey, FileIntermediateCert)
	}
	return k, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// IssueRequest describes one leaf certificate.
type IssueRequest struct {
	Type CertType
	// Name is the file name (NAME.crt, NAME.key, NAME.chain.crt) and the
	// default common name: letters, digits, '.', '_' and '-'.
	Name       string
	CommonName string // default Name

	DNSNames            []string
	IPAddresses         []net.IP
	URIs                []*url.URL // e.g. spiffe://plant.example/hmi-1
	OrganizationalUnits []string
	// Role is the Modbus/TCP Security role (client certificates only),
	// written as the 1.3.6.1.4.1.50316.802.1 UTF8String extension.
	Role string

	Validity  time.Duration // default 365 days
	NotBefore time.Time     // default now minus one minute
	Key       KeySpec       // default ECDSA P-256

	OutDir string // default <CA dir>/certs
	Force  bool   // replace existing files of the same name
}

// Issued is the result of Issue.
type Issued struct {
	Cert      *x509.Certificate
	Chain     []*x509.Certificate // leaf, intermediate
	Key       crypto.Signer
	CertFile  string // the leaf alone
	ChainFile string // leaf + intermediate: what a TLS peer should present
	KeyFile   string // 0600, unencrypted (servers and `conduit connect` load it unattended)
	Entry     IndexEntry
}

var validName = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$`)

// Issue creates a key and a certificate signed by the intermediate, writes
// them and records the certificate in the index.
func (ca *CA) Issue(req IssueRequest) (*Issued, error) {
	if !validName.MatchString(req.Name) {
		return nil, fmt.Errorf("pki: name %q: use 1-128 letters, digits, '.', '_' or '-' (it names the files)", req.Name)
	}
	cn := req.CommonName
	if cn == "" {
		cn = req.Name
	}
	var sans []string
	sans = append(sans, req.DNSNames...)
	for _, ip := range req.IPAddresses {
		sans = append(sans, ip.String())
	}
	for _, u := range req.URIs {
		sans = append(sans, u.String())
	}
	var tmpl string
	data := x509util.CreateTemplateData(cn, nil)
	data.SetSubject(x509util.Subject{CommonName: cn, OrganizationalUnit: req.OrganizationalUnits})
	// CreateSANs guesses the type from the text; build them typed instead
	// so that a DNS name never turns into a URI or the reverse.
	var typed []x509util.SubjectAlternativeName
	for _, d := range req.DNSNames {
		typed = append(typed, x509util.SubjectAlternativeName{Type: x509util.DNSType, Value: d})
	}
	for _, ip := range req.IPAddresses {
		typed = append(typed, x509util.SubjectAlternativeName{Type: x509util.IPType, Value: ip.String()})
	}
	for _, u := range req.URIs {
		typed = append(typed, x509util.SubjectAlternativeName{Type: x509util.URIType, Value: u.String()})
	}
	data.SetSubjectAlternativeNames(typed...)
	switch req.Type {
	case CertServer:
		if len(req.DNSNames)+len(req.IPAddresses) == 0 {
			return nil, errors.New("pki: a server certificate needs at least one DNS name or IP address (--dns, --ip): clients verify the name they dial")
		}
		if req.Role != "" {
			return nil, errors.New("pki: a role belongs in a client certificate, not a server certificate")
		}
		tmpl = serverTemplate
	case CertClient:
		if req.Role != "" {
			ext, err := RoleExtension(req.Role)
			if err != nil {
				return nil, err
			}
			data.Set("ModbusRole", ext.Value)
		}
		tmpl = clientTemplate
	default:
		return nil, fmt.Errorf("pki: certificate type %q: use server or client", req.Type)
	}
	validity := req.Validity
	if validity <= 0 {
		validity = DefaultLeafValidity
	}
	notBefore := req.NotBefore
	if notBefore.IsZero() {
		notBefore = ca.now().Add(-leafBackdate).Truncate(time.Second)
	}
	notAfter := notBefore.Add(validity)
	if notAfter.After(ca.Intermediate.NotAfter) {
		return nil, fmt.Errorf("pki: the certificate would outlive the intermediate CA (%s); issue it for less time", ca.Intermediate.NotAfter.UTC().Format(time.RFC3339))
	}

	outDir := req.OutDir
	if outDir == "" {
		outDir = filepath.Join(ca.Dir, DirIssued)
	}
	certFile := filepath.Join(outDir, req.Name+".crt")
	chainFile := filepath.Join(outDir, req.Name+".chain.crt")
	keyFile := filepath.Join(outDir, req.Name+".key")
	exists := func() error {
		if req.Force {
			return nil
		}
		for _, f := range []string{certFile, chainFile, keyFile} {
			if _, err := os.Lstat(f); err == nil {
				return fmt.Errorf("pki: %s exists; choose another name or replace it with --force", f)
			}
		}
		return nil
	}
	// Checked now, to fail before the key is made, and again under the
	// lock: another `pki issue` of the same name may have written its
	// files since.
	if err := exists(); err != nil {
		return nil, err
	}

	signer, err := ca.signer()
	if err != nil {
		return nil, err
	}
	key, err := GenerateKey(req.Key)
	if err != nil {
		return nil, err
	}
	cert, err := signFromTemplate(key, cn, tmpl, data, notBefore, notAfter, ca.Intermediate, signer)
	if err != nil {
		return nil, fmt.Errorf("pki: sign %s certificate %q: %w", req.Type, req.Name, err)
	}
	// The template engine is powerful; check that what came out is what
	// was asked for before anyone trusts it.
	if roles, err := RolesFromCertificate(cert); err != nil || (req.Role != "" && (len(roles) != 1 || roles[0] != req.Role)) {
		return nil, fmt.Errorf("pki: internal error: role extension of the new certificate does not decode to %q (%v, %v)", req.Role, roles, err)
	}

	keyPEM, err := EncodeKey(key, nil)
	if err != nil {
		return nil, err
	}
	unlock, err := lockDir(ca.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := exists(); err != nil {
		return nil, err
	}
	idx, err := ca.readIndex()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(outDir, ModeCADir); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	// Key before certificate: a watcher that sees the new certificate
	// finds its key already in place.
	if err := WriteFileAtomic(keyFile, keyPEM, ModePrivateKey); err != nil {
		return nil, err
	}
	if err := WriteFileAtomic(certFile, EncodeCerts(cert), ModePublic); err != nil {
		return nil, err
	}
	if err := WriteFileAtomic(chainFile, EncodeCerts(cert, ca.Intermediate), ModePublic); err != nil {
		return nil, err
	}
	entry := newIndexEntry(req.Name, req.Type, cert, chainFile)
	idx.Certificates = append(idx.Certificates, entry)
	if err := ca.writeIndex(idx); err != nil {
		return nil, fmt.Errorf("%w (the certificate was written to %s but is not in the index)", err, certFile)
	}
	return &Issued{
		Cert: cert, Chain: []*x509.Certificate{cert, ca.Intermediate}, Key: key,
		CertFile: certFile, ChainFile: chainFile, KeyFile: keyFile, Entry: entry,
	}, nil
}

// signFromTemplate builds a certificate for key from an x509util template
// and signs it with parentKey (self-signed when parent is nil).
func signFromTemplate(key crypto.Signer, cn, tmpl string, data x509util.TemplateData, notBefore, notAfter time.Time, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, error) {
	csr, err := x509util.CreateCertificateRequest(cn, nil, key)
	if err != nil {
		return nil, err
	}
	if data == nil {
		data = x509util.CreateTemplateData(cn, nil)
	}
	c, err := x509util.NewCertificate(csr, x509util.WithTemplate(tmpl, data))
	if err != nil {
		return nil, err
	}
	t := c.GetCertificate()
	t.NotBefore = notBefore
	t.NotAfter = notAfter
	if parent == nil {
		parent = t
	}
	return x509util.CreateCertificate(t, parent, key.Public(), parentKey)
}
