# The grants the tests of the rules decide against (decide(x) in
# conduit_test.rego), instead of data.grants: the tests of the rules must not
# depend on your data.json or on any other data file (learned.json). Leave
# this file as it is when you replace data.json; the tests of YOUR grants are
# in data_test.rego.
#
# It is a copy of the example grants of data.json (descriptions left out),
# so that the tests read like the demo.
package conduit_test

fixture := {
	"plc-line1": {
		# Loopback clients: read every table 0..99, write the setpoints
		# (holding registers 10..19, 0..1000) and coils 0..15, echo.
		"demo-loopback": {
			"clients": {"cidrs": ["127.0.0.0/8", "::1/128"]},
			"modbus": {
				"units": [1],
				"read": fixture_reads,
				"write": {
					"holding_registers": [{"start": 10, "end": 19, "min": 0, "max": 1000}],
					"coils": [{"start": 0, "end": 15}],
				},
				"functions": [{"function": 8, "subfunctions": [0]}],
			},
		},
		# Role operator on the control network: read only.
		"operators": {
			"clients": {"cidrs": ["10.20.0.0/16"], "roles": ["operator"]},
			"modbus": {"units": [1], "read": fixture_reads},
		},
		# Role engineer on the control network: read, write the
		# setpoints, echo and device identification.
		"engineers": {
			"clients": {"cidrs": ["10.20.0.0/16"], "roles": ["engineer"]},
			"modbus": {
				"units": [1],
				"read": fixture_reads,
				"write": {"holding_registers": [{"start": 10, "end": 19, "min": 0, "max": 1000}]},
				"functions": [
					{"function": 8, "subfunctions": [0]},
					{"function": 43, "subfunctions": [14]},
				],
			},
		},
		# The historian by SPIFFE id, from any address: reads registers.
		"historian": {
			"clients": {"uris": ["spiffe://plant.example/historian"]},
			"modbus": {
				"units": [1],
				"read": {
					"input_registers": [{"start": 0, "end": 99}],
					"holding_registers": [{"start": 0, "end": 99}],
				},
			},
		},
	},
	"opcua-line1": {
		# Loopback clients: read, browse, subscribe, write Setpoint
		# (0..1000) and Mode, call ResetCounters.
		"demo-loopback": {
			"clients": {"cidrs": ["127.0.0.0/8", "::1/128"]},
			"opcua": {
				"read": true,
				"browse": true,
				"subscribe": true,
				"writes": [
					{"node_id": "ns=2;s=Line1.Setpoint", "min": 0, "max": 1000},
					{"node_id": "ns=2;s=Line1.Mode"},
				],
				"calls": [{"object_id": "ns=2;s=Line1", "method_id": "ns=2;s=Line1.ResetCounters"}],
			},
		},
		# The engineering station (CN eng-ws-01) as user engineer1: also
		# the Description attribute, history updates of the counter, and
		# encrypted channels with its pinned application certificate.
		"engineering-station": {
			"clients": {"common_names": ["eng-ws-01"]},
			"opcua": {
				"read": true,
				"browse": true,
				"subscribe": true,
				"user_names": ["engineer1"],
				"writes": [
					{"node_id": "ns=2;s=Line1.Setpoint", "min": 0, "max": 1000},
					{"node_id": "ns=2;s=Line1.Mode"},
					{"node_id": "ns=2;s=Line1.Description", "attributes": ["Value", "Description"]},
				],
				"history_update": ["ns=2;s=Line1.Counter"],
				"opaque": {
					"security_policies": ["http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"],
					"thumbprints": ["5d41402abc4b2a76b9719d911017c592ae5a1f3c"],
				},
			},
		},
	},
}

fixture_reads := {
	"coils": [{"start": 0, "end": 99}],
	"discrete_inputs": [{"start": 0, "end": 99}],
	"holding_registers": [{"start": 0, "end": 99}],
	"input_registers": [{"start": 0, "end": 99}],
}

# The fixture is valid data: the tests of the rules decide against grants a
# team could write.
test_fixture_is_valid if {
	errors := errors_of(fixture)
	print("data_errors of the fixture:", errors)
	count(errors) == 0
}
