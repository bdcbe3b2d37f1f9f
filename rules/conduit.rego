# METADATA
# title: Conduit reference policy
# description: |
#   Data-driven, deny by default. data.grants lists, per listener, who may do
#   what (rules/README.md). An operation is allowed when one grant that
#   matches the client allows all of it; otherwise the decision names the
#   first check that failed.
package conduit

# The entry point Conduit evaluates (policy.Query). Exactly one value for
# every input: the rules below are mutually exclusive, and the default only
# applies if none of them could be evaluated at all.
default decision := {
	"allow": false,
	"reason": "denied by default: no rule of the policy applied",
	"rule": "conduit.default",
}

decision := {
	"allow": true,
	"reason": sprintf("allowed by grant %s on listener %s", [id, input.listener]),
	"rule": sprintf("grant/%s", [id]),
} if {
	id := allowing_grant
}

decision := denial if not allowing_grant

# The grants of the listener the operation arrived on.
listener_grants := data.grants[input.listener]

# The grants whose clients section matches the client, by id (see
# "Clients" below): with cidrs, the address must be in one of them ...
matching_grants[id] := g if {
	some id, g in listener_grants
	c := g.clients
	some cidr in c.cidrs
	net.cidr_contains(cidr, input.client.address)
	identity_matches(c)
}

# ... without, the section must name identities.
matching_grants[id] := g if {
	some id, g in listener_grants
	c := g.clients
	not c.cidrs
	has_identity_criteria(c)
	identity_matches(c)
}

# The first (by id) matching grant that allows the whole operation. An allow
# needs positive proof (grant_allows); the violation rules below only
# explain denials, so a gap in them can never allow anything.
allowing_grant := min(ids) if {
	ids := {id | some id, g in matching_grants; grant_allows(g)}
	count(ids) > 0
}

grant_allows(g) if {
	input.protocol == "modbus"
	modbus_allows(object.get(g, "modbus", null))
}

grant_allows(g) if {
	input.protocol == "opcua"
	opcua_allows(object.get(g, "opcua", null))
}

# Why the operation is denied: the listener has no grants, the client has
# none, or the check that failed in the client's grant(s).
denial := deny("conduit.listener", sprintf("listener %s has no grants", [input.listener])) if {
	not listener_grants
} else := deny("conduit.client", sprintf("%s has no grant on listener %s", [client_desc, input.listener])) if {
	count(matching_grants) == 0
} else := why(g) if {
	count(matching_grants) == 1
	some g in matching_grants
} else := object.union(why(matching_grants[first]), {"reason": concat("; ", reasons)}) if {
	ids := sort(object.keys(matching_grants))
	first := ids[0]
	reasons := [sprintf("grant %s: %s", [id, why(matching_grants[id]).reason]) | some id in ids]
}

# why(g) explains why grant g does not allow the operation.
why(g) := v if {
	v := violation(g)
} else := deny("conduit.denied", sprintf("the operation is not allowed on listener %s", [input.listener]))

deny(rule, reason) := {"allow": false, "rule": rule, "reason": reason}

# Modbus denials carry the exception code a device would answer with.
deny_code(rule, reason, code) := {"allow": false, "rule": rule, "reason": reason, "exception_code": code}

# violation(g) is the first check of grant g the operation fails.
violation(g) := modbus_violation(object.get(g, "modbus", null)) if {
	input.protocol == "modbus"
} else := opcua_violation(object.get(g, "opcua", null)) if {
	input.protocol == "opcua"
} else := deny("conduit.protocol", sprintf("protocol %v is not supported by this policy", [input.protocol])) if {
	not input.protocol in {"modbus", "opcua"}
}

## Clients

# A grant's clients section matches when every kind of criterion it lists
# matches: the network (cidrs) and the certificate identity (common_names,
# roles, uris: any one of them). A section that lists no criterion matches
# nobody, and so does a criterion with an empty list. (matching_grants
# above inlines the network part: fewer function calls per grant.)

# The criteria keys of a clients section.
criteria_keys := {"cidrs", "common_names", "roles", "uris"}

has_identity_criteria(c) if c.common_names

has_identity_criteria(c) if c.roles

has_identity_criteria(c) if c.uris

identity_matches(c) if not has_identity_criteria(c)

identity_matches(c) if {
	id := input.client.identity
	is_object(id)
	identity_listed(c, id)
}

identity_listed(c, id) if id.common_name in c.common_names

identity_listed(c, id) if {
	some role in id.roles
	role in c.roles
}

identity_listed(c, id) if {
	some uri in id.uris
	uri in c.uris
}

# "client 10.9.9.9", or "client 10.20.1.5 (CN hmi-01, roles operator)" with
# a certificate.
client_desc := sprintf("client %s (CN %s, roles %s)", [input.client.address, id.common_name, roles]) if {
	id := input.client.identity
	is_object(id)
	count(id.roles) > 0
	roles := concat(",", id.roles)
} else := sprintf("client %s (CN %s)", [input.client.address, id.common_name]) if {
	id := input.client.identity
	is_object(id)
} else := sprintf("client %s", [input.client.address])
