# The reference policy with grants as `conduit learn` writes them: one grant
# per observed client, holding exactly the units, ranges, value extremes and
# diagnostics seen. The policy must allow what was observed and nothing
# outside it.
package conduit_test

learned := {"plc-line1": {"learned-10.1.1.5": {
	"description": "learned 2026-05-04..2026-05-11 from 18211 requests",
	"clients": {"cidrs": ["10.1.1.5/32"]},
	"modbus": {
		"units": [1],
		"read": {"holding_registers": [{"start": 0, "end": 9}], "coils": [{"start": 0, "end": 0}]},
		"write": {"holding_registers": [{"start": 5, "end": 5, "min": 10, "max": 20}]},
		"functions": [{"function": 8, "subfunctions": [0]}],
	},
}}}

learned_client := plain("10.1.1.5")

test_learned_behaviour_allowed if {
	decide_with(read_hr(learned_client, 0, 10), learned).allow
	decide_with(read_hr(learned_client, 3, 2), learned).allow
	decide_with(write_hr(learned_client, 5, 10), learned).allow
	decide_with(write_hr(learned_client, 5, 20), learned).allow
	decide_with(diag(learned_client, 0), learned).allow
}

test_unlearned_behaviour_denied if {
	denied(decide_with(read_hr(learned_client, 0, 11), learned), "conduit.modbus.read", "read of holding_registers 0..10 is not granted on listener plc-line1")
	denied(decide_with(write_hr(learned_client, 5, 21), learned), "conduit.modbus.value", "write of 21 to holding_registers 5 exceeds max 20 for listener plc-line1")
	denied(decide_with(write_hr(learned_client, 5, 9), learned), "conduit.modbus.value", "write of 9 to holding_registers 5 is below min 10 for listener plc-line1")
	denied(decide_with(write_hr(learned_client, 6, 15), learned), "conduit.modbus.write", "write to holding_registers 6 is not granted on listener plc-line1")
	denied(decide_with(diag(learned_client, 1), learned), "conduit.modbus.function", "function 8 subfunction 1 (restart communications option) is not allowed on listener plc-line1")
	denied(decide_with(read_hr(plain("10.1.1.6"), 0, 10), learned), "conduit.client", "client 10.1.1.6 has no grant on listener plc-line1")
}

test_learned_grants_are_valid if {
	count(errors_of(learned)) == 0
}
