# Tests of the decision, client matching and identity rules, and the helpers
# the other test files use to build inputs. Inputs follow
# docs/policy-input.schema.json.
package conduit_test

import data.conduit

## Input builders

loopback := {"address": "127.0.0.1", "port": 50100, "identity": null}

plain(address) := {"address": address, "port": 50100, "identity": null}

# A client with a verified certificate (mTLS).
mtls(address, cn, roles, uris) := {
	"address": address,
	"port": 50100,
	"identity": {
		"common_name": cn,
		"subject": sprintf("CN=%s,O=Plant", [cn]),
		"issuer": "CN=Plant CA,O=Plant",
		"dns_names": [],
		"uris": uris,
		"ip_addresses": [],
		"organizational_units": [],
		"roles": roles,
		"serial": "1A2B",
		"fingerprint_sha256": "00",
		"not_before": "2026-01-01T00:00:00Z",
		"not_after": "2027-01-01T00:00:00Z",
	},
}

mb(client, access, name, m) := {
	"protocol": "modbus",
	"listener": "plc-line1",
	"upstream": "127.0.0.1:5020",
	"client": client,
	"operation": {"access": access, "name": name},
	"modbus": m,
}

read_hr(client, address, quantity) := mb(client, "read", "read_holding_registers", {
	"unit": 1, "function": 3, "table": "holding_registers",
	"address": address, "quantity": quantity,
})

write_hr(client, address, value) := mb(client, "write", "write_single_register", {
	"unit": 1, "function": 6, "table": "holding_registers",
	"address": address, "quantity": 1, "values": [value],
})

write_hrs(client, address, values) := mb(client, "write", "write_multiple_registers", {
	"unit": 1, "function": 16, "table": "holding_registers",
	"address": address, "quantity": count(values), "values": values,
})

diag(client, sub) := mb(client, "diagnostic", "diagnostics", {"unit": 1, "function": 8, "subfunction": sub})

# The decision for x with the fixture grants (fixture_test.rego), whatever
# the data files hold: the tests of the rules use this or decide_with.
decide(x) := decide_with(x, fixture)

# The decision for x with grants g.
decide_with(x, g) := d if {
	d := conduit.decision with input as x with data.grants as g
}

# The decision for x with the policy's own data (data.json, learned.json,
# ...): for the tests of your grants in data_test.rego only.
decide_data(x) := d if {
	d := conduit.decision with input as x
}

denied(d, rule, reason) if {
	d.allow == false
	d.rule == rule
	d.reason == reason
}

## The decision

test_allow_names_the_grant if {
	d := decide(read_hr(loopback, 0, 10))
	d == {
		"allow": true,
		"reason": "allowed by grant demo-loopback on listener plc-line1",
		"rule": "grant/demo-loopback",
	}
}

test_unknown_listener if {
	x := object.union(read_hr(loopback, 0, 10), {"listener": "plc-9"})
	denied(decide(x), "conduit.listener", "listener plc-9 has no grants")
}

test_client_without_grant if {
	denied(decide(read_hr(plain("10.9.9.9"), 0, 10)), "conduit.client", "client 10.9.9.9 has no grant on listener plc-line1")
}

test_ipv6_loopback if {
	decide(read_hr(plain("::1"), 0, 10)).allow
}

test_unparsable_address_matches_no_cidr if {
	denied(decide(read_hr(plain(""), 0, 10)), "conduit.client", "client  has no grant on listener plc-line1")
}

test_unknown_protocol if {
	x := object.union(read_hr(loopback, 0, 10), {"protocol": "dnp3"})
	denied(decide(x), "conduit.protocol", "protocol dnp3 is not supported by this policy")
}

test_modbus_input_on_opcua_only_grant if {
	g := {"plc-line1": {"ua": {"clients": {"cidrs": ["127.0.0.0/8"]}, "opcua": {"read": true}}}}
	denied(decide_with(read_hr(loopback, 0, 10), g), "conduit.grant.protocol", "the grant has no modbus section for listener plc-line1")
}

test_first_allowing_grant_by_id if {
	g := {"plc-line1": {
		"b": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "read": {"holding_registers": [{"start": 0, "end": 9}]}}},
		"a": {"clients": {"cidrs": ["127.0.0.1/32"]}, "modbus": {"units": [1], "read": {"holding_registers": [{"start": 0, "end": 9}]}}},
	}}
	decide_with(read_hr(loopback, 0, 10), g).rule == "grant/a"
}

test_any_matching_grant_may_allow if {
	g := {"plc-line1": {
		"a": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "read": {"coils": [{"start": 0, "end": 9}]}}},
		"b": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "read": {"holding_registers": [{"start": 0, "end": 9}]}}},
	}}
	decide_with(read_hr(loopback, 0, 10), g).rule == "grant/b"
}

test_several_grants_deny_with_every_reason if {
	# The historian (by SPIFFE id) and the operators (by role) both match;
	# neither may write.
	c := mtls("10.20.1.5", "hist-01", ["operator"], ["spiffe://plant.example/historian"])
	d := decide(write_hr(c, 15, 500))
	denied(d, "conduit.modbus.write", concat("; ", [
		"grant historian: write to holding_registers 15 is not granted on listener plc-line1",
		"grant operators: write to holding_registers 15 is not granted on listener plc-line1",
	]))
	d.exception_code == 2
}

test_unexplained_denial_still_denies if {
	d := conduit.decision with input as read_hr(loopback, 500, 1) with data.grants as fixture with conduit.violation as no_violation
	denied(d, "conduit.denied", "the operation is not allowed on listener plc-line1")
}

no_violation(_) := 1 if false

test_default_decision_without_listener if {
	d := decide(object.remove(read_hr(loopback, 0, 10), ["listener"]))
	d == {"allow": false, "reason": "denied by default: no rule of the policy applied", "rule": "conduit.default"}
}

## Clients

test_grant_without_criteria_matches_nobody if {
	g := {"plc-line1": {"open": {"clients": {}, "modbus": {"units": [1], "read": {"holding_registers": [{"start": 0, "end": 9}]}}}}}
	denied(decide_with(read_hr(loopback, 0, 10), g), "conduit.client", "client 127.0.0.1 has no grant on listener plc-line1")
}

test_grant_without_clients_matches_nobody if {
	g := {"plc-line1": {"open": {"modbus": {"units": [1], "read": {"holding_registers": [{"start": 0, "end": 9}]}}}}}
	denied(decide_with(read_hr(loopback, 0, 10), g), "conduit.client", "client 127.0.0.1 has no grant on listener plc-line1")
}

cn_grant := {"plc-line1": {"hmi": {
	"clients": {"common_names": ["hmi-01"]},
	"modbus": {"units": [1], "read": {"holding_registers": [{"start": 0, "end": 9}]}},
}}}

test_common_name_from_any_address if {
	decide_with(read_hr(mtls("192.168.7.7", "hmi-01", [], []), 0, 10), cn_grant).allow
}

test_common_name_mismatch if {
	denied(
		decide_with(read_hr(mtls("192.168.7.7", "hmi-02", [], []), 0, 10), cn_grant),
		"conduit.client", "client 192.168.7.7 (CN hmi-02) has no grant on listener plc-line1",
	)
}

test_identity_criteria_need_a_certificate if {
	denied(decide_with(read_hr(plain("192.168.7.7"), 0, 10), cn_grant), "conduit.client", "client 192.168.7.7 has no grant on listener plc-line1")
}

## Identity: in the fixture only role engineer writes setpoints, role
## operator only reads, both from the control network 10.20.0.0/16.

engineer := mtls("10.20.1.5", "eng-01", ["engineer"], [])

operator := mtls("10.20.1.6", "op-01", ["operator"], [])

test_engineer_writes_setpoint if {
	d := decide(write_hr(engineer, 15, 750))
	d.allow
	d.rule == "grant/engineers"
}

test_engineer_setpoint_limit if {
	denied(decide(write_hr(engineer, 15, 1001)), "conduit.modbus.value", "write of 1001 to holding_registers 15 exceeds max 1000 for listener plc-line1")
}

test_engineer_reads_device_identification if {
	x := mb(engineer, "diagnostic", "read_device_identification", {"unit": 1, "function": 43, "subfunction": 14, "device_id_code": 1, "object_id": 0})
	decide(x).allow
}

test_operator_reads if {
	d := decide(read_hr(operator, 0, 100))
	d.allow
	d.rule == "grant/operators"
}

test_operator_may_not_write if {
	d := decide(write_hr(operator, 15, 500))
	denied(d, "conduit.modbus.write", "write to holding_registers 15 is not granted on listener plc-line1")
	d.exception_code == 2
}

test_operator_may_not_run_diagnostics if {
	denied(decide(diag(operator, 0)), "conduit.modbus.function", "function 8 subfunction 0 (return query data (echo)) is not allowed on listener plc-line1")
}

test_role_outside_the_control_network if {
	denied(
		decide(write_hr(mtls("10.9.9.9", "eng-01", ["engineer"], []), 15, 500)),
		"conduit.client", "client 10.9.9.9 (CN eng-01, roles engineer) has no grant on listener plc-line1",
	)
}

test_certificate_without_role if {
	denied(
		decide(read_hr(mtls("10.20.1.7", "laptop", [], []), 0, 10)),
		"conduit.client", "client 10.20.1.7 (CN laptop) has no grant on listener plc-line1",
	)
}

test_operator_and_engineer_roles_may_write if {
	d := decide(write_hr(mtls("10.20.1.8", "shift-lead", ["operator", "engineer"], []), 12, 10))
	d.allow
	d.rule == "grant/engineers"
}

test_spiffe_historian_reads_from_anywhere if {
	x := mb(mtls("172.16.0.9", "historian", [], ["spiffe://plant.example/historian"]), "read", "read_input_registers", {
		"unit": 1, "function": 4, "table": "input_registers", "address": 0, "quantity": 50,
	})
	d := decide(x)
	d.allow
	d.rule == "grant/historian"
}

test_wrong_spiffe_id if {
	x := read_hr(mtls("172.16.0.9", "historian", [], ["spiffe://other.example/historian"]), 0, 10)
	denied(decide(x), "conduit.client", "client 172.16.0.9 (CN historian) has no grant on listener plc-line1")
}

test_empty_criterion_matches_nobody if {
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"], "roles": []}, "modbus": {"units": [1], "read": {"holding_registers": [{"start": 0, "end": 9}]}}}}}
	denied(decide_with(read_hr(loopback, 0, 10), g), "conduit.client", "client 127.0.0.1 has no grant on listener plc-line1")
}
