# Tests of data_errors, the validation of data.grants, on grants given
# here. That your data is valid is tested in data_test.rego.
package conduit_test

import data.conduit

# The validation errors of grants g.
errors_of(g) := e if {
	e := conduit.data_errors with data.grants as g
}

# The errors of one grant g on listener l, grant id x.
grant_errors(g) := errors_of({"l": {"x": g}})

ok_clients := {"cidrs": ["10.0.0.0/8"]}

test_grants_must_be_objects if {
	errors_of([]) == {"data.grants must be an object: listener -> grant id -> grant"}
	errors_of({"l": []}) == {"grants.l must be an object: grant id -> grant"}
	errors_of({"l": {"x": 1}}) == {
		"grants.l.x must be an object",
		"grants.l.x: unknown key \"(not an object)\" (known: clients, description, modbus, opcua)",
	}
}

test_valid_minimal_grants if {
	count(grant_errors({"clients": ok_clients, "modbus": {"units": [1]}})) == 0
	count(grant_errors({"clients": ok_clients, "opcua": {}})) == 0
}

test_grant_keys if {
	grant_errors({"clients": ok_clients, "modbus": {"units": [1]}, "modbsu": {}}) == {
		"grants.l.x: unknown key \"modbsu\" (known: clients, description, modbus, opcua)",
	}
	grant_errors({"clients": ok_clients}) == {"grants.l.x: has neither a modbus nor an opcua section: it allows nothing"}
	grant_errors({"modbus": {"units": [1]}}) == {"grants.l.x: clients lists no cidrs, common_names, roles or uris: the grant matches nobody"}
}

test_client_keys if {
	grant_errors({"clients": {"cidr": ["10.0.0.0/8"]}, "opcua": {}}) == {
		"grants.l.x.clients: unknown key \"cidr\" (known: cidrs, common_names, roles, uris)",
		"grants.l.x: clients lists no cidrs, common_names, roles or uris: the grant matches nobody",
	}
	grant_errors({"clients": {"roles": "engineer"}, "opcua": {}}) == {"grants.l.x.clients.roles must be an array of strings"}
	grant_errors({"clients": {"cidrs": ["10.0.0.1", "10.0.0.0/33", 7]}, "opcua": {}}) == {
		"grants.l.x.clients.cidrs must be an array of strings",
		"grants.l.x.clients.cidrs: 10.0.0.1 is not a CIDR (e.g. 10.0.0.0/8, 10.1.2.3/32)",
		"grants.l.x.clients.cidrs: 10.0.0.0/33 is not a CIDR (e.g. 10.0.0.0/8, 10.1.2.3/32)",
		"grants.l.x.clients.cidrs: 7 is not a CIDR (e.g. 10.0.0.0/8, 10.1.2.3/32)",
	}
}

test_modbus_keys_and_units if {
	grant_errors({"clients": ok_clients, "modbus": {"units": [1], "writes": {}}}) == {
		"grants.l.x.modbus: unknown key \"writes\" (known: allow_broadcast, functions, read, units, write)",
	}
	grant_errors({"clients": ok_clients, "modbus": {"units": [256, 1.5]}}) == {
		"grants.l.x.modbus.units: 256 is not a unit id (0..255)",
		"grants.l.x.modbus.units: 1.5 is not a unit id (0..255)",
	}
	grant_errors({"clients": ok_clients, "modbus": {}}) == {"grants.l.x.modbus.units is empty: the grant allows no unit"}
	grant_errors({"clients": ok_clients, "modbus": {"units": [0], "allow_broadcast": "yes"}}) == {"grants.l.x.modbus.allow_broadcast must be true or false"}
}

test_modbus_tables if {
	grant_errors({"clients": ok_clients, "modbus": {"units": [1], "read": {"holding_register": []}, "write": {"input_registers": []}}}) == {
		"grants.l.x.modbus.read: unknown table \"holding_register\" (known: coils, discrete_inputs, fifo, file, holding_registers, input_registers)",
		"grants.l.x.modbus.write: unknown table \"input_registers\" (known: coils, file, holding_registers)",
	}
}

range_errors(kind, table, r) := grant_errors({"clients": ok_clients, "modbus": {"units": [1], kind: {table: [r]}}})

test_modbus_ranges if {
	count(range_errors("write", "holding_registers", {"start": 0, "end": 9, "min": 0, "max": 10})) == 0
	range_errors("read", "coils", {"start": 0, "end": 9, "max": 1, "step": 1}) == {
		"grants.l.x.modbus.read.coils[0]: unknown key \"step\" (known: end, max, min, start)",
	}
	range_errors("read", "coils", {"start": 10, "end": 9}) == {"grants.l.x.modbus.read.coils[0]: start 10 is after end 9"}
	range_errors("read", "coils", {"start": -1}) == {
		"grants.l.x.modbus.read.coils[0].start must be an address 0..65535",
		"grants.l.x.modbus.read.coils[0].end must be an address 0..65535",
	}
	range_errors("write", "holding_registers", {"start": 0, "end": 0, "min": 5, "max": 70000}) == {
		"grants.l.x.modbus.write.holding_registers[0].max must be a value 0..65535",
	}
	range_errors("write", "holding_registers", {"start": 0, "end": 0, "min": 5, "max": 4}) == {
		"grants.l.x.modbus.write.holding_registers[0]: min 5 is greater than max 4",
	}
	count(range_errors("write", "file", {"file": 1, "start": 0, "end": 0})) == 0
	write_ranges_errors([{"start": 0, "end": 9}, {"start": 9, "end": 12}, {"start": 20, "end": 29}, {"start": 13, "end": 19}]) == {
		"grants.l.x.modbus.write.holding_registers[0] and [1] overlap: merge them, or split them where their limits differ",
	}
	count(grant_errors({"clients": ok_clients, "modbus": {"units": [1], "write": {"file": [{"file": 1, "start": 0, "end": 9}, {"file": 2, "start": 0, "end": 9}]}}})) == 0
	range_errors("write", "file", {"start": 0, "end": 0}) == {"grants.l.x.modbus.write.file[0].file must be a file number"}
}

write_ranges_errors(rs) := grant_errors({"clients": ok_clients, "modbus": {"units": [1], "write": {"holding_registers": rs}}})

function_errors(f) := grant_errors({"clients": ok_clients, "modbus": {"units": [1], "functions": [f]}})

test_modbus_functions if {
	count(function_errors({"function": 8, "subfunctions": [0]})) == 0
	function_errors({"function": 8, "subfunction": [0]}) == {
		"grants.l.x.modbus.functions[0]: unknown key \"subfunction\" (known: function, subfunctions)",
	}
	function_errors({"function": 0}) == {"grants.l.x.modbus.functions[0].function must be a function code 1..255"}
	function_errors({"function": 16}) == {"grants.l.x.modbus.functions[0]: function 16 reads or writes data: grant it with read/write ranges"}
	function_errors({"function": 8, "subfunctions": ["echo"]}) == {"grants.l.x.modbus.functions[0].subfunctions: echo is not a sub-function code"}
}

ua_errors(o) := grant_errors({"clients": ok_clients, "opcua": o})

test_opcua_keys if {
	ua_errors({"reads": true}) == {
		"grants.l.x.opcua: unknown key \"reads\" (known: browse, calls, history_update, node_management, opaque, read, subscribe, user_names, writes)",
	}
	ua_errors({"read": "yes"}) == {"grants.l.x.opcua.read must be true or false"}
	ua_errors({"user_names": "engineer1"}) == {"grants.l.x.opcua.user_names must be an array of strings"}
	ua_errors({"node_management": ["AddNode"]}) == {
		"grants.l.x.opcua.node_management: AddNode is not one of AddNodes, AddReferences, DeleteNodes, DeleteReferences",
	}
}

test_opcua_writes_and_calls if {
	count(ua_errors({"writes": [{"node_id": "ns=2;s=A", "min": -1.5, "max": 2, "attributes": ["Value"]}]})) == 0
	ua_errors({"writes": [{"node": "ns=2;s=A"}]}) == {
		"grants.l.x.opcua.writes[0]: unknown key \"node\" (known: attributes, max, min, node_id)",
		"grants.l.x.opcua.writes[0].node_id must be a node id string (e.g. ns=2;s=Line1.Setpoint)",
	}
	ua_errors({"writes": [{"node_id": "ns=2;s=A", "min": "0"}]}) == {"grants.l.x.opcua.writes[0].min must be a number"}
	ua_errors({"writes": [{"node_id": "ns=2;s=A", "min": 3, "max": 2}]}) == {"grants.l.x.opcua.writes[0]: min 3 is greater than max 2"}
	ua_errors({"calls": [{"object_id": "ns=2;s=A"}]}) == {"grants.l.x.opcua.calls[0] needs object_id and method_id"}
	ua_errors({"calls": [{"method_id": "ns=2;s=A"}]}) == {"grants.l.x.opcua.calls[0] needs object_id and method_id"}
}

test_opcua_opaque_needs_pins if {
	count(ua_errors({"opaque": {"security_policies": ["p"], "thumbprints": ["t"]}})) == 0
	ua_errors({"opaque": {"security_policies": ["p"]}}) == {
		"grants.l.x.opcua.opaque.thumbprints must list at least one string: encrypted channels are allowed only for listed security policies and pinned client certificates",
	}
}

# An empty user_names does not restrict the session user at all (every user
# passes, as without it), unlike every other empty list in a grant.
test_empty_user_names_is_reported if {
	count(ua_errors({"read": true, "user_names": ["engineer1"]})) == 0
	ua_errors({"read": true, "user_names": []}) == {
		"grants.l.x.opcua.user_names is empty: every session user passes, as without it (remove it, or list the users)",
	}
}

test_empty_criterion_is_reported if {
	grant_errors({"clients": {"cidrs": ["10.0.0.0/8"], "roles": []}, "opcua": {}}) == {
		"grants.l.x.clients.roles is empty: it matches nobody (remove it to not restrict by it)",
	}
}
