package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"

	"github.com/conduit-ot/conduit/internal/readfile"
)

// File modes. Private keys are readable by their owner only; the CA
// directory likewise, because it holds the signing keys.
const (
	ModePrivateKey os.FileMode = 0o600
	ModePublic     os.FileMode = 0o644
	ModeCADir      os.FileMode = 0o700
)

// Key algorithms accepted by GenerateKey and the CLI.
const (
	KeyTypeEC  = "EC"  // ECDSA, curves P-256 (default), P-384, P-521
	KeyTypeRSA = "RSA" // RSA, 2048 bits or more (default 3072)
	KeyTypeOKP = "OKP" // Ed25519
)

// DefaultRSABits is the RSA modulus size when none is given.
const DefaultRSABits = 3072

// KeySpec names a key algorithm. The zero value is ECDSA P-256.
type KeySpec struct {
	Type  string // KeyTypeEC, KeyTypeRSA or KeyTypeOKP; "" means EC
	Curve string // EC: P-256, P-384, P-521; OKP: Ed25519
	Bits  int    // RSA only
}

// normalize fills defaults and rejects combinations that keyutil would
// accept but that do not belong in a TLS deployment (small RSA keys).
func (k KeySpec) normalize() (KeySpec, error) {
	switch k.Type {
	case "", KeyTypeEC, "ec", "ecdsa", "ECDSA":
		k.Type = KeyTypeEC
		if k.Curve == "" {
			k.Curve = "P-256"
		}
		switch k.Curve {
		case "P-256", "P-384", "P-521":
		default:
			return k, fmt.Errorf("pki: curve %q: use P-256, P-384 or P-521 with EC keys", k.Curve)
		}
		k.Bits = 0
	case KeyTypeRSA, "rsa":
		k.Type = KeyTypeRSA
		if k.Bits == 0 {
			k.Bits = DefaultRSABits
		}
		if k.Bits < 2048 {
			return k, fmt.Errorf("pki: RSA keys must have at least 2048 bits, not %d", k.Bits)
		}
		k.Curve = ""
	case KeyTypeOKP, "okp", "ed25519", "Ed25519":
		k.Type = KeyTypeOKP
		if k.Curve == "" {
			k.Curve = "Ed25519"
		}
		if k.Curve != "Ed25519" {
			return k, fmt.Errorf("pki: curve %q: only Ed25519 is supported with OKP keys", k.Curve)
		}
		k.Bits = 0
	default:
		return k, fmt.Errorf("pki: key type %q: use EC, RSA or OKP", k.Type)
	}
	return k, nil
}

// String is the key type as shown by `pki list` and stored in ca.json.
func (k KeySpec) String() string {
	if k.Type == KeyTypeRSA {
		return fmt.Sprintf("RSA-%d", k.Bits)
	}
	if k.Type == "" {
		return "EC P-256"
	}
	return k.Type + " " + k.Curve
}

// GenerateKey creates a private key of the given kind with go.step.sm/crypto.
func GenerateKey(spec KeySpec) (crypto.Signer, error) {
	spec, err := spec.normalize()
	if err != nil {
		return nil, err
	}
	s, err := keyutil.GenerateSigner(spec.Type, spec.Curve, spec.Bits)
	if err != nil {
		return nil, fmt.Errorf("pki: generate %s key: %w", spec, err)
	}
	return s, nil
}

// EncodeKey returns key as PKCS#8 PEM, encrypted with password (PBES2,
// AES-256-CBC) when password is not empty.
func EncodeKey(key crypto.PrivateKey, password []byte) ([]byte, error) {
	opts := []pemutil.Options{pemutil.WithPKCS8(true)}
	if len(password) > 0 {
		opts = append(opts, pemutil.WithPassword(password))
	}
	block, err := pemutil.Serialize(key, opts...)
	if err != nil {
		return nil, fmt.Errorf("pki: encode private key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}

// ErrKeyEncrypted is returned when a key is passphrase-protected and no
// passphrase was given.
var ErrKeyEncrypted = errors.New("pki: private key is encrypted: a passphrase is required")

// ParseKey decodes a PEM private key, decrypting it with password when it is
// encrypted. An encrypted key without a password is ErrKeyEncrypted; a wrong
// password is an error too.
func ParseKey(data, password []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("pki: no PEM private key found")
	}
	encrypted := block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] == "4,ENCRYPTED"
	if encrypted && len(password) == 0 {
		return nil, ErrKeyEncrypted
	}
	var opts []pemutil.Options
	if len(password) > 0 {
		opts = append(opts, pemutil.WithPassword(password))
	}
	// Only the first block: a key file may carry comments or a second
	// block we do not need, but never more than one key.
	opts = append(opts, pemutil.WithFirstBlock())
	k, err := pemutil.ParseKey(pem.EncodeToMemory(block), opts...)
	if err != nil {
		return nil, fmt.Errorf("pki: parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("pki: %T is not a signing key", k)
	}
	return s, nil
}

// EncodeCerts returns certs as concatenated PEM blocks, in order.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParseCerts decodes every CERTIFICATE block in data. Other block types are
// an error: a certificate file that also holds a key is a mistake worth
// reporting.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("pki: unexpected PEM block %q in a certificate file", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: parse certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("pki: no PEM certificate found")
	}
	return certs, nil
}

// ReadCerts reads a PEM certificate file (a single certificate, a chain or a
// bundle).
func ReadCerts(path string) ([]*x509.Certificate, error) {
	b, err := ReadMaterial(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	certs, err := ParseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// ReadKey reads a PEM private key file, decrypting it with password if it is
// encrypted.
func ReadKey(path string, password []byte) (crypto.Signer, error) {
	b, err := ReadMaterial(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	k, err := ParseKey(b, password)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadKeyPair reads a certificate (chain) and its unencrypted key, checks
// that they match, and fills Leaf.
func LoadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := ReadMaterial(certFile)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	keyPEM, err := ReadMaterial(keyFile)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return parseKeyPair(certPEM, keyPEM, certFile, keyFile)
}

func parseKeyPair(certPEM, keyPEM []byte, certFile, keyFile string) (*tls.Certificate, error) {
	if _, err := ParseCerts(certPEM); err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	if _, err := ParseKey(keyPEM, nil); err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s and %s: %w", certFile, keyFile, err)
	}
	// Go 1.23+ fills Leaf; parse explicitly so older assumptions hold.
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("pki: %s: %w", certFile, err)
		}
	}
	return &c, nil
}

// WriteFileAtomic writes data to path with mode perm so that a reader sees
// either the old or the new content, never a partial file: a temporary file
// in the same directory, fsync, rename, fsync of the directory. The
// certificate watchers rely on this.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		d.Sync() // best effort: the rename is what matters for readers
		d.Close()
	}
	return nil
}

// ReadPasswordFile returns the first line of a passphrase file, without the
// line ending. An empty passphrase is an error: it would silently mean "no
// encryption".
func ReadPasswordFile(path string) ([]byte, error) {
	b, err := ReadMaterial(path)
	if err != nil {
		return nil, fmt.Errorf("pki: password file: %w", err)
	}
	for i, c := range b {
		if c == '\n' || c == '\r' {
			b = b[:i]
			break
		}
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("pki: password file %s is empty", path)
	}
	return b, nil
}

// MaxMaterialSize bounds a TLS material file (certificate, key, CA bundle,
// CRL, passphrase, token). A large CA's CRL is a few megabytes; anything
// beyond this is not TLS material.
const MaxMaterialSize = 64 << 20

// ReadMaterial reads a TLS material file: a regular file (or a symlink to
// one) of at most MaxMaterialSize bytes. A FIFO, a device such as
// /dev/zero or a runaway file is refused instead of blocking a reload or
// exhausting memory.
func ReadMaterial(path string) ([]byte, error) {
	return readfile.Regular(path, MaxMaterialSize)
}
