package opcua

import (
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
)

// SecurityMode is the MessageSecurityMode of a channel (Part 4 §7.20).
type SecurityMode uint8

const (
	SecurityModeInvalid SecurityMode = iota
	SecurityModeNone
	SecurityModeSign
	SecurityModeSignAndEncrypt
)

// String returns the configuration and policy-facing name: "none", "sign",
// "sign_and_encrypt" ("invalid" for the zero value).
func (m SecurityMode) String() string {
	switch m {
	case SecurityModeNone:
		return "none"
	case SecurityModeSign:
		return "sign"
	case SecurityModeSignAndEncrypt:
		return "sign_and_encrypt"
	}
	return "invalid"
}

// ParseSecurityMode parses a listener's security_mode setting.
func ParseSecurityMode(s string) (SecurityMode, bool) {
	switch s {
	case "none":
		return SecurityModeNone, true
	case "sign":
		return SecurityModeSign, true
	case "sign_and_encrypt":
		return SecurityModeSignAndEncrypt, true
	}
	return SecurityModeInvalid, false
}

// Security policy URIs (Part 7) and the size of the symmetric signature
// each appends to a chunk: HMAC-SHA1 (20 bytes) or HMAC-SHA256 (32 bytes).
const (
	PolicyNone                = "http://opcfoundation.org/UA/SecurityPolicy#None"
	PolicyBasic128Rsa15       = "http://opcfoundation.org/UA/SecurityPolicy#Basic128Rsa15"
	PolicyBasic256            = "http://opcfoundation.org/UA/SecurityPolicy#Basic256"
	PolicyBasic256Sha256      = "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"
	PolicyAes128Sha256RsaOaep = "http://opcfoundation.org/UA/SecurityPolicy#Aes128_Sha256_RsaOaep"
	PolicyAes256Sha256RsaPss  = "http://opcfoundation.org/UA/SecurityPolicy#Aes256_Sha256_RsaPss"

	sha1SignatureSize   = 20
	sha256SignatureSize = 32
)

// SignatureSize returns the symmetric signature size of a policy and whether
// the policy is known. None has no signature.
func SignatureSize(policyURI string) (int, bool) {
	switch policyURI {
	case PolicyNone:
		return 0, true
	case PolicyBasic128Rsa15, PolicyBasic256:
		return sha1SignatureSize, true
	case PolicyBasic256Sha256, PolicyAes128Sha256RsaOaep, PolicyAes256Sha256RsaPss:
		return sha256SignatureSize, true
	}
	return 0, false
}

// AsymmetricHeader is the security header of an OPN chunk (Part 6
// §6.7.2.3). Byte slices point into the chunk: copy to retain.
type AsymmetricHeader struct {
	SecureChannelID               uint32
	SecurityPolicyURI             []byte
	SenderCertificate             []byte // DER, possibly a chain
	ReceiverCertificateThumbprint []byte
}

// thumbprintSize is the size of a SHA-1 certificate thumbprint (Part 6
// §6.7.2.3: ReceiverCertificateThumbprint is null or 20 bytes).
const thumbprintSize = 20

// ParseAsymmetricHeader reads the asymmetric header that follows the message
// header of an OPN chunk and returns it and the offset of what follows.
func ParseAsymmetricHeader(chunk []byte) (AsymmetricHeader, int, error) {
	var h AsymmetricHeader
	if len(chunk) < HeaderSize {
		return h, 0, errorf(CodeTruncated, "opn header")
	}
	var r reader
	r.init(chunk, nil)
	r.pos = HeaderSize
	h.SecureChannelID = r.u32()
	uri, null := r.stringBytes()
	if r.err == nil && (null || len(uri) == 0) {
		r.fail(CodeInvalidEncoding, "missing security policy uri")
	}
	h.SecurityPolicyURI = uri
	h.SenderCertificate, _ = r.byteString()
	h.ReceiverCertificateThumbprint, _ = r.byteString()
	if r.err == nil && len(h.ReceiverCertificateThumbprint) != 0 && len(h.ReceiverCertificateThumbprint) != thumbprintSize {
		r.fail(CodeInvalidEncoding, "receiver thumbprint of %d bytes", len(h.ReceiverCertificateThumbprint))
	}
	return h, r.pos, r.err
}

// CertificateInfo returns the subject and SHA-1 thumbprint (lowercase hex)
// of the leaf certificate in a SenderCertificate field. Part 6 §6.7.2.3
// allows a chain: the leaf comes first, followed by its issuers.
func CertificateInfo(der []byte) (subject, thumbprint string, err error) {
	if len(der) == 0 {
		return "", "", nil
	}
	leaf, err := leafDER(der)
	if err != nil {
		return "", "", err
	}
	cert, perr := x509.ParseCertificate(leaf)
	if perr != nil {
		return "", "", errorf(CodeInvalidEncoding, "sender certificate: %v", perr)
	}
	sum := sha1.Sum(leaf)
	return cert.Subject.String(), hex.EncodeToString(sum[:]), nil
}

// leafDER returns the first DER SEQUENCE in b, using its own length.
func leafDER(b []byte) ([]byte, error) {
	if len(b) < 2 || b[0] != 0x30 {
		return nil, errorf(CodeInvalidEncoding, "sender certificate is not DER")
	}
	n := int(b[1])
	hdr := 2
	if n&0x80 != 0 {
		k := n & 0x7F
		if k == 0 || k > 4 || len(b) < 2+k {
			return nil, errorf(CodeInvalidEncoding, "sender certificate length")
		}
		n = 0
		for _, c := range b[2 : 2+k] {
			n = n<<8 | int(c)
		}
		hdr += k
	}
	if n < 0 || hdr+n > len(b) {
		return nil, errorf(CodeInvalidEncoding, "sender certificate length %d exceeds %d bytes", n, len(b)-hdr)
	}
	return b[:hdr+n], nil
}
