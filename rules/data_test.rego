# Tests of YOUR grants: replace these when you replace data.json.
#
# The tests of the rules (conduit_test.rego, modbus_test.rego, ...) decide
# against fixture grants of their own (fixture_test.rego) and pass whatever
# your data files hold. This file tests the data the policy actually loads:
# data.json and every other data file in the directory (learned.json), with
# decide_data(x). Keep test_reference_data_is_valid; replace the checks below
# with what your plant relies on. Assert allow/deny and, for Modbus denials,
# the exception code; reason strings are tested with the rules.
package conduit_test

import data.conduit

# data_errors (validate.rego) is empty: no unknown key, bad range, overlap,
# invalid CIDR, ... in any data file. With policy.run_tests on, a data file
# with errors is refused and the last good policy keeps running.
test_reference_data_is_valid if {
	errors := conduit.data_errors
	print("data_errors:", errors)
	count(errors) == 0
}

## The example grants (data.json): the steps of `conduit demo` on plc-line1
## (cmd/conduit/demo.go), from a loopback client.

test_demo_reads if {
	decide_data(read_hr(loopback, 10, 4)).allow
	decide_data(mb(loopback, "read", "read_input_registers", {
		"unit": 1, "function": 4, "table": "input_registers", "address": 0, "quantity": 4,
	})).allow
}

test_demo_setpoint_write if {
	decide_data(write_hr(loopback, 12, 500)).allow
}

test_demo_setpoint_limit if {
	d := decide_data(write_hr(loopback, 12, 5000))
	d.allow == false
	d.exception_code == 3 # illegal data value
}

test_demo_coil_50 if {
	x := mb(loopback, "write", "write_single_coil", {
		"unit": 1, "function": 5, "table": "coils", "address": 50, "quantity": 1, "values": [1],
	})
	d := decide_data(x)
	d.allow == false
	d.exception_code == 2 # illegal data address
}

test_demo_force_listen_only if {
	d := decide_data(diag(loopback, 4))
	d.allow == false
	d.exception_code == 1 # illegal function
}

test_demo_broadcast_write if {
	x := mb(loopback, "write", "write_single_register", {
		"unit": 0, "function": 6, "table": "holding_registers", "address": 12, "quantity": 1, "values": [7],
	})
	decide_data(x).allow == false
}

## And on opcua-line1: a loopback client writes the line setpoint, 0..1000.

test_demo_opcua_setpoint if {
	decide_data(ua_write(loopback, [setpoint(500)])).allow
	decide_data(ua_write(loopback, [setpoint(5000)])).allow == false
}
