# Validation of data.grants (package conduit).
#
# data_errors lists what is wrong with the grants: unknown keys (a typo
# would otherwise silently grant less, or nothing), ranges with start > end
# or min > max, invalid CIDRs, function codes that belong in read/write. The
# Rego test test_reference_data_is_valid fails on any of them, so with
# policy.run_tests on, a broken data file is refused at reload and the last
# good version keeps running. Decisions never evaluate data_errors.
package conduit

grant_keys := {"description", "clients", "modbus", "opcua"}

client_keys := {"cidrs", "common_names", "roles", "uris"}

modbus_keys := {"units", "read", "write", "functions", "allow_broadcast"}

range_keys := {"start", "end", "min", "max"}

file_range_keys := range_keys | {"file"}

function_keys := {"function", "subfunctions"}

opcua_keys := {
	"read", "browse", "subscribe", "writes", "calls", "node_management",
	"history_update", "opaque", "user_names",
}

opcua_write_keys := {"node_id", "attributes", "min", "max"}

# Read and write function codes are granted through read/write ranges.
data_function_codes := {1, 2, 3, 4, 5, 6, 15, 16, 20, 21, 22, 23, 24}

data_errors contains "data.grants must be an object: listener -> grant id -> grant" if {
	not is_object(data.grants)
}

data_errors contains sprintf("grants.%s must be an object: grant id -> grant", [l]) if {
	some l, grants in data.grants
	not is_object(grants)
}

# all_grants[[listener, id]] is every grant.
all_grants[[l, id]] := g if {
	some l, grants in data.grants
	is_object(grants)
	some id, g in grants
}

data_errors contains msg if {
	some [l, id], g in all_grants
	not is_object(g)
	msg := sprintf("grants.%s.%s must be an object", [l, id])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some k in unknown_keys(g, grant_keys)
	msg := sprintf("grants.%s.%s: unknown key %q (known: %s)", [l, id, k, concat(", ", sort(grant_keys))])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	is_object(g)
	not has_client_criteria(object.get(g, "clients", {}))
	msg := sprintf("grants.%s.%s: clients lists no cidrs, common_names, roles or uris: the grant matches nobody", [l, id])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	is_object(g)
	not g.modbus
	not g.opcua
	msg := sprintf("grants.%s.%s: has neither a modbus nor an opcua section: it allows nothing", [l, id])
}

## clients

data_errors contains msg if {
	some [l, id], g in all_grants
	some k in unknown_keys(g.clients, client_keys)
	msg := sprintf("grants.%s.%s.clients: unknown key %q (known: %s)", [l, id, k, concat(", ", sort(client_keys))])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some k in client_keys
	not string_array(object.get(g.clients, k, []))
	msg := sprintf("grants.%s.%s.clients.%s must be an array of strings", [l, id, k])
}

has_client_criteria(c) if count(object.keys(c) & criteria_keys) > 0

data_errors contains msg if {
	some [l, id], g in all_grants
	some k, list in g.clients
	k in criteria_keys
	count(list) == 0
	msg := sprintf("grants.%s.%s.clients.%s is empty: it matches nobody (remove it to not restrict by it)", [l, id, k])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some cidr in object.get(g.clients, "cidrs", [])
	not valid_cidr(cidr)
	msg := sprintf("grants.%s.%s.clients.cidrs: %v is not a CIDR (e.g. 10.0.0.0/8, 10.1.2.3/32)", [l, id, cidr])
}

valid_cidr(c) if {
	is_string(c)
	contains(c, "/")
	net.cidr_is_valid(c)
}

## modbus

data_errors contains msg if {
	some [l, id], g in all_grants
	some k in unknown_keys(g.modbus, modbus_keys)
	msg := sprintf("grants.%s.%s.modbus: unknown key %q (known: %s)", [l, id, k, concat(", ", sort(modbus_keys))])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	units := object.get(g.modbus, "units", [])
	some u in units
	not integer_in(u, 0, 255)
	msg := sprintf("grants.%s.%s.modbus.units: %v is not a unit id (0..255)", [l, id, u])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	is_object(g.modbus)
	count(object.get(g.modbus, "units", [])) == 0
	msg := sprintf("grants.%s.%s.modbus.units is empty: the grant allows no unit", [l, id])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some kind, tables in {"read": read_tables, "write": write_tables}
	some t in unknown_keys(object.get(g.modbus, kind, {}), tables)
	msg := sprintf("grants.%s.%s.modbus.%s: unknown table %q (known: %s)", [l, id, kind, t, concat(", ", sort(tables))])
}

# modbus_ranges[[path, keys]] := range, for every read/write range.
modbus_ranges[[path, keys]] := r if {
	some [l, id], g in all_grants
	some kind in ["read", "write"]
	some t, ranges in object.get(g.modbus, kind, {})
	some i, r in ranges
	path := sprintf("grants.%s.%s.modbus.%s.%s[%d]", [l, id, kind, t, i])
	keys := range_keys_for(t)
}

range_keys_for("file") := file_range_keys

range_keys_for(t) := range_keys if t != "file"

data_errors contains msg if {
	some [path, keys], r in modbus_ranges
	some k in unknown_keys(r, keys)
	msg := sprintf("%s: unknown key %q (known: %s)", [path, k, concat(", ", sort(keys))])
}

data_errors contains msg if {
	some [path, _], r in modbus_ranges
	some k in ["start", "end"]
	not integer_in(object.get(r, k, null), 0, 65535)
	msg := sprintf("%s.%s must be an address 0..65535", [path, k])
}

data_errors contains msg if {
	some [path, _], r in modbus_ranges
	r.start > r.end
	msg := sprintf("%s: start %v is after end %v", [path, r.start, r.end])
}

data_errors contains msg if {
	some [path, _], r in modbus_ranges
	some k in ["min", "max"]
	k in object.keys(r)
	not integer_in(r[k], 0, 65535)
	msg := sprintf("%s.%s must be a value 0..65535", [path, k])
}

data_errors contains msg if {
	some [path, _], r in modbus_ranges
	r.min > r.max
	msg := sprintf("%s: min %v is greater than max %v", [path, r.min, r.max])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some t, ranges in object.get(object.get(g, "modbus", {}), "write", {})
	some i, a in ranges
	some j, b in ranges
	i < j
	object.get(a, "file", null) == object.get(b, "file", null)
	a.start <= b.end
	b.start <= a.end
	msg := sprintf("grants.%s.%s.modbus.write.%s[%d] and [%d] overlap: merge them, or split them where their limits differ", [l, id, t, i, j])
}

data_errors contains msg if {
	some [path, keys], r in modbus_ranges
	"file" in keys
	not integer_in(object.get(r, "file", null), 0, 65535)
	msg := sprintf("%s.file must be a file number", [path])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some i, f in object.get(g.modbus, "functions", [])
	some k in unknown_keys(f, function_keys)
	msg := sprintf("grants.%s.%s.modbus.functions[%d]: unknown key %q (known: function, subfunctions)", [l, id, i, k])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some i, f in object.get(g.modbus, "functions", [])
	not integer_in(object.get(f, "function", null), 1, 255)
	msg := sprintf("grants.%s.%s.modbus.functions[%d].function must be a function code 1..255", [l, id, i])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some i, f in object.get(g.modbus, "functions", [])
	f.function in data_function_codes
	msg := sprintf("grants.%s.%s.modbus.functions[%d]: function %d reads or writes data: grant it with read/write ranges", [l, id, i, f.function])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some i, f in object.get(g.modbus, "functions", [])
	some s in object.get(f, "subfunctions", [])
	not integer_in(s, 0, 65535)
	msg := sprintf("grants.%s.%s.modbus.functions[%d].subfunctions: %v is not a sub-function code", [l, id, i, s])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	"allow_broadcast" in object.keys(object.get(g, "modbus", {}))
	not is_boolean(g.modbus.allow_broadcast)
	msg := sprintf("grants.%s.%s.modbus.allow_broadcast must be true or false", [l, id])
}

## opcua

data_errors contains msg if {
	some [l, id], g in all_grants
	some k in unknown_keys(g.opcua, opcua_keys)
	msg := sprintf("grants.%s.%s.opcua: unknown key %q (known: %s)", [l, id, k, concat(", ", sort(opcua_keys))])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some k in ["read", "browse", "subscribe"]
	k in object.keys(object.get(g, "opcua", {}))
	not is_boolean(g.opcua[k])
	msg := sprintf("grants.%s.%s.opcua.%s must be true or false", [l, id, k])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some i, w in object.get(g.opcua, "writes", [])
	some k in unknown_keys(w, opcua_write_keys)
	msg := sprintf("grants.%s.%s.opcua.writes[%d]: unknown key %q (known: %s)", [l, id, i, k, concat(", ", sort(opcua_write_keys))])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some i, w in object.get(g.opcua, "writes", [])
	not is_string(object.get(w, "node_id", null))
	msg := sprintf("grants.%s.%s.opcua.writes[%d].node_id must be a node id string (e.g. ns=2;s=Line1.Setpoint)", [l, id, i])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some i, w in object.get(g.opcua, "writes", [])
	some k in ["min", "max"]
	k in object.keys(w)
	not is_number(w[k])
	msg := sprintf("grants.%s.%s.opcua.writes[%d].%s must be a number", [l, id, i, k])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some i, w in object.get(g.opcua, "writes", [])
	w.min > w.max
	msg := sprintf("grants.%s.%s.opcua.writes[%d]: min %v is greater than max %v", [l, id, i, w.min, w.max])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some i, c in object.get(g.opcua, "calls", [])
	not is_string(object.get(c, "object_id", null))
	msg := sprintf("grants.%s.%s.opcua.calls[%d] needs object_id and method_id", [l, id, i])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some i, c in object.get(g.opcua, "calls", [])
	not is_string(object.get(c, "method_id", null))
	msg := sprintf("grants.%s.%s.opcua.calls[%d] needs object_id and method_id", [l, id, i])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some s in object.get(g.opcua, "node_management", [])
	not s in node_management_services
	msg := sprintf("grants.%s.%s.opcua.node_management: %v is not one of %s", [l, id, s, concat(", ", sort(node_management_services))])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	some k in ["user_names", "history_update"]
	not string_array(object.get(object.get(g, "opcua", {}), k, []))
	msg := sprintf("grants.%s.%s.opcua.%s must be an array of strings", [l, id, k])
}

# An empty list elsewhere allows nothing (or matches nobody); an empty
# user_names would silently allow every session user.
data_errors contains msg if {
	some [l, id], g in all_grants
	g.opcua.user_names == []
	msg := sprintf("grants.%s.%s.opcua.user_names is empty: every session user passes, as without it (remove it, or list the users)", [l, id])
}

data_errors contains msg if {
	some [l, id], g in all_grants
	op := g.opcua.opaque
	some k in ["security_policies", "thumbprints"]
	not non_empty_string_array(object.get(op, k, []))
	msg := sprintf("grants.%s.%s.opcua.opaque.%s must list at least one string: encrypted channels are allowed only for listed security policies and pinned client certificates", [l, id, k])
}

## helpers

unknown_keys(obj, known) := object.keys(obj) - known if is_object(obj)

unknown_keys(obj, _) := {"(not an object)"} if not is_object(obj)

string_array(a) if {
	is_array(a)
	every x in a {
		is_string(x)
	}
}

non_empty_string_array(a) if {
	string_array(a)
	count(a) > 0
}

integer_in(x, lo, hi) if {
	is_number(x)
	x == round(x)
	lo <= x
	x <= hi
}
