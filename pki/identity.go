package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// OIDModbusRole is the Modbus/TCP Security role extension
// (MODBUS/TCP Security Protocol Specification, 2018, section 6.3: "RoleOID"),
// an ASN.1 UTF8String naming the client's role.
var OIDModbusRole = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 50316, 802, 1}

// Identity is the verified identity of a TLS client, as handed to the policy
// (input.client.identity) and written to audit events (tls.client.x509.*).
// It is built once per connection, after the handshake verified the chain.
type Identity struct {
	CommonName          string
	Subject             string // RFC 2253 form of the subject
	Issuer              string // RFC 2253 form of the issuer
	DNSNames            []string
	URIs                []string
	IPAddresses         []string
	OrganizationalUnits []string
	Roles               []string // Modbus/TCP Security role extension values
	Serial              string   // upper-case hex, no separators (ECS x509.serial_number)
	FingerprintSHA256   string   // lower-case hex of the DER certificate
	NotBefore           time.Time
	NotAfter            time.Time
}

// IdentityFromCertificate extracts the Identity of a verified leaf
// certificate. A malformed role extension is an error: the caller must refuse
// the connection rather than authorize without the role the issuer meant.
func IdentityFromCertificate(cert *x509.Certificate) (*Identity, error) {
	sum := sha256.Sum256(cert.Raw)
	id := &Identity{
		CommonName:          cert.Subject.CommonName,
		Subject:             cert.Subject.String(),
		Issuer:              cert.Issuer.String(),
		DNSNames:            append([]string(nil), cert.DNSNames...),
		OrganizationalUnits: append([]string(nil), cert.Subject.OrganizationalUnit...),
		Serial:              strings.ToUpper(cert.SerialNumber.Text(16)),
		FingerprintSHA256:   hex.EncodeToString(sum[:]),
		NotBefore:           cert.NotBefore,
		NotAfter:            cert.NotAfter,
	}
	for _, u := range cert.URIs {
		id.URIs = append(id.URIs, u.String())
	}
	for _, ip := range cert.IPAddresses {
		id.IPAddresses = append(id.IPAddresses, ip.String())
	}
	roles, err := RolesFromCertificate(cert)
	if err != nil {
		return nil, err
	}
	id.Roles = roles
	return id, nil
}

// RolesFromCertificate returns the values of every Modbus/TCP Security role
// extension in cert. The standard allows one; more than one is accepted and
// all are reported so the policy sees exactly what the issuer signed.
func RolesFromCertificate(cert *x509.Certificate) ([]string, error) {
	var roles []string
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(OIDModbusRole) {
			continue
		}
		// Exactly one UTF8String: encoding/asn1 would also decode any other
		// string type into a string (PrintableString, BMPString, and
		// T61String and GeneralString as raw, possibly invalid UTF-8
		// bytes), whatever the "utf8" parameter says.
		var raw asn1.RawValue
		rest, err := asn1.Unmarshal(ext.Value, &raw)
		if err != nil {
			return nil, fmt.Errorf("pki: Modbus role extension: %w", err)
		}
		if len(rest) != 0 {
			return nil, fmt.Errorf("pki: Modbus role extension: %d trailing bytes", len(rest))
		}
		if raw.Class != asn1.ClassUniversal || raw.Tag != asn1.TagUTF8String || raw.IsCompound {
			return nil, fmt.Errorf("pki: Modbus role extension: not a UTF8String (class %d, tag %d)", raw.Class, raw.Tag)
		}
		if !utf8.Valid(raw.Bytes) {
			return nil, errors.New("pki: Modbus role extension: invalid UTF-8")
		}
		roles = append(roles, string(raw.Bytes))
	}
	return roles, nil
}

// RoleExtension returns the certificate extension that carries role, encoded
// as the Modbus/TCP Security specification requires (a UTF8String).
func RoleExtension(role string) (pkix.Extension, error) {
	v, err := asn1.MarshalWithParams(role, "utf8")
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("pki: encode role %q: %w", role, err)
	}
	return pkix.Extension{Id: OIDModbusRole, Value: v}, nil
}
