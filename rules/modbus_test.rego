# Tests of the Modbus checks: reads, writes and value limits, FC 22 masks,
# FC 23, file records, FIFO, units, broadcast, diagnostics and other codes.
package conduit_test

## Reads (fixture: every table 0..99 for loopback clients)

test_read_each_table if {
	every t in ["coils", "discrete_inputs", "input_registers", "holding_registers"] {
		decide(mb(loopback, "read", "read", {"unit": 1, "function": 3, "table": t, "address": 90, "quantity": 10})).allow
	}
}

test_read_past_the_range if {
	d := decide(read_hr(loopback, 95, 10))
	denied(d, "conduit.modbus.read", "read of holding_registers 95..104 is not granted on listener plc-line1")
	d.exception_code == 2
}

test_read_of_a_table_without_ranges if {
	x := mb(loopback, "read", "read_coils", {"unit": 1, "function": 1, "table": "coils", "address": 0, "quantity": 1})
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "read": {"holding_registers": [{"start": 0, "end": 9}]}}}}}
	denied(decide_with(x, g), "conduit.modbus.read", "read of coils 0..0 is not granted on listener plc-line1")
}

test_read_must_fit_one_range if {
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "read": {"holding_registers": [{"start": 0, "end": 9}, {"start": 10, "end": 19}]}}}}}
	decide_with(read_hr(loopback, 10, 10), g).allow
	denied(decide_with(read_hr(loopback, 5, 10), g), "conduit.modbus.read", "read of holding_registers 5..14 is not granted on listener plc-line1")
}

test_read_without_a_table if {
	x := mb(loopback, "read", "read_exception_status", {"unit": 1, "function": 7})
	denied(decide(x), "conduit.modbus.read", "function 7 (read exception status) does not read a data table the policy knows")
}

## Units and broadcast

test_unit_not_granted if {
	x := mb(loopback, "read", "read_holding_registers", {"unit": 2, "function": 3, "table": "holding_registers", "address": 0, "quantity": 1})
	denied(decide(x), "conduit.modbus.unit", "unit 2 is not granted on listener plc-line1")
}

broadcast_grants(allow) := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {
	"units": [0, 1],
	"allow_broadcast": allow,
	"read": {"holding_registers": [{"start": 0, "end": 99}]},
	"write": {"holding_registers": [{"start": 0, "end": 99}]},
}}}}

broadcast_write := mb(loopback, "write", "write_single_register", {
	"unit": 0, "function": 6, "table": "holding_registers", "address": 5, "quantity": 1, "values": [1],
})

test_broadcast_write_denied_even_with_unit_0_listed if {
	denied(decide_with(broadcast_write, broadcast_grants(false)), "conduit.modbus.broadcast", "broadcast (unit 0) write is not allowed on listener plc-line1")
}

test_broadcast_write_allowed_explicitly if {
	decide_with(broadcast_write, broadcast_grants(true)).allow
}

test_unit_0_read_is_no_broadcast_write if {
	x := mb(loopback, "read", "read_holding_registers", {"unit": 0, "function": 3, "table": "holding_registers", "address": 0, "quantity": 1})
	decide_with(x, broadcast_grants(false)).allow
}

test_broadcast_write_needs_unit_0_listed if {
	denied(decide(broadcast_write), "conduit.modbus.unit", "unit 0 is not granted on listener plc-line1")
}

## Register writes (fixture: holding registers 10..19, 0..1000)

test_write_single_register if {
	d := decide(write_hr(loopback, 15, 500))
	d.allow
	d.rule == "grant/demo-loopback"
}

test_write_limits_inclusive if {
	decide(write_hrs(loopback, 10, [0, 1000])).allow
	decide(write_hrs(loopback, 18, [1000, 0])).allow
}

test_write_over_max if {
	d := decide(write_hr(loopback, 15, 5000))
	denied(d, "conduit.modbus.value", "write of 5000 to holding_registers 15 exceeds max 1000 for listener plc-line1")
	d.exception_code == 3
}

test_write_reason_names_the_largest_bad_value if {
	denied(decide(write_hrs(loopback, 10, [1, 2000, 3000, 5])), "conduit.modbus.value", "write of 3000 to holding_registers 12 exceeds max 1000 for listener plc-line1")
}

test_write_outside_the_ranges if {
	d := decide(write_hrs(loopback, 18, [1, 2, 3]))
	denied(d, "conduit.modbus.write", "write to holding_registers 20 is not granted on listener plc-line1")
	d.exception_code == 2
}

test_write_reason_from_the_brief if {
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "write": {"holding_registers": [{"start": 0, "end": 99, "max": 1000}]}}}}}
	denied(decide_with(write_hr(loopback, 40, 5000), g), "conduit.modbus.value", "write of 5000 to holding_registers 40 exceeds max 1000 for listener plc-line1")
}

test_write_under_min if {
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "write": {"holding_registers": [{"start": 0, "end": 9, "min": 10}]}}}}}
	decide_with(write_hr(loopback, 3, 10), g).allow
	denied(decide_with(write_hr(loopback, 3, 9), g), "conduit.modbus.value", "write of 9 to holding_registers 3 is below min 10 for listener plc-line1")
}

test_adjacent_ranges_with_their_own_limits if {
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "write": {"holding_registers": [
		{"start": 0, "end": 4, "max": 10},
		{"start": 5, "end": 9, "min": 100, "max": 200},
	]}}}}}
	decide_with(write_hrs(loopback, 3, [10, 0, 100, 200]), g).allow
	denied(decide_with(write_hrs(loopback, 3, [10, 0, 100, 99]), g), "conduit.modbus.value", "write of 99 to holding_registers 6 is below min 100 for listener plc-line1")
	denied(decide_with(write_hrs(loopback, 3, [11, 0, 100, 300]), g), "conduit.modbus.value", "write of 11 to holding_registers 3 exceeds max 10 for listener plc-line1")
}

# Overlapping ranges are invalid data (validate.rego); if they slip
# through, a value must satisfy every range that holds its address.
test_overlapping_ranges_all_must_admit if {
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "write": {"holding_registers": [
		{"start": 0, "end": 9, "max": 150},
		{"start": 5, "end": 5, "min": 100, "max": 200},
	]}}}}}
	decide_with(write_hr(loopback, 5, 120), g).allow
	decide_with(write_hr(loopback, 3, 7), g).allow
	denied(decide_with(write_hr(loopback, 5, 7), g), "conduit.modbus.value", "write of 7 to holding_registers 5 is below min 100 for listener plc-line1")
	denied(decide_with(write_hr(loopback, 5, 180), g), "conduit.modbus.value", "write of 180 to holding_registers 5 exceeds max 150 for listener plc-line1")
}

# With the same start, bad ranges are reported in the order they are listed
# (this used to be an evaluation error: a conflict in an object keyed by start).
test_overlapping_ranges_with_the_same_start if {
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "write": {"holding_registers": [
		{"start": 0, "end": 9, "max": 150},
		{"start": 0, "end": 5, "min": 100, "max": 200},
	]}}}}}
	decide_with(write_hr(loopback, 3, 120), g).allow
	denied(decide_with(write_hr(loopback, 3, 250), g), "conduit.modbus.value", "write of 250 to holding_registers 3 exceeds max 150 for listener plc-line1")
	denied(decide_with(write_hr(loopback, 3, 7), g), "conduit.modbus.value", "write of 7 to holding_registers 3 is below min 100 for listener plc-line1")
}

test_longest_coil_write if {
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "write": {"coils": [{"start": 0, "end": 1999}]}}}}}
	values := [v | some i in numbers.range(0, 1967); v := i % 2]
	decide_with(write_coils(0, values), g).allow
	denied(decide_with(write_coils(100, values), g), "conduit.modbus.write", "write to coils 2000 is not granted on listener plc-line1")
}

test_write_quantity_and_values_disagree if {
	x := mb(loopback, "write", "write_multiple_registers", {"unit": 1, "function": 16, "table": "holding_registers", "address": 10, "quantity": 3, "values": [1, 2]})
	d := decide(x)
	denied(d, "conduit.modbus.malformed", "the write carries 2 values for quantity 3")
	d.exception_code == 3
}

test_write_without_values if {
	x := mb(loopback, "write", "write_multiple_registers", {"unit": 1, "function": 16, "table": "holding_registers", "address": 10, "quantity": 0, "values": []})
	denied(decide(x), "conduit.modbus.malformed", "the write carries no values")
}

test_write_without_a_table if {
	x := mb(loopback, "write", "vendor_write", {"unit": 1, "function": 65})
	denied(decide(x), "conduit.modbus.write", "function 65 does not write a data table the policy knows")
}

test_write_to_read_only_table if {
	x := mb(loopback, "write", "write", {"unit": 1, "function": 6, "table": "input_registers", "address": 1, "quantity": 1, "values": [1]})
	denied(decide(x), "conduit.modbus.write", "function 6 (write single register) does not write a data table the policy knows")
}

## Coils (fixture: coils 0..15, no limits)

write_coils(address, values) := mb(loopback, "write", "write_multiple_coils", {
	"unit": 1, "function": 15, "table": "coils", "address": address, "quantity": count(values), "values": values,
})

test_write_single_coil if {
	decide(mb(loopback, "write", "write_single_coil", {"unit": 1, "function": 5, "table": "coils", "address": 3, "quantity": 1, "values": [1]})).allow
}

test_write_multiple_coils if {
	decide(write_coils(0, [1, 0, 1, 1, 0, 0, 0, 1])).allow
	denied(decide(write_coils(14, [1, 1, 1])), "conduit.modbus.write", "write to coils 16 is not granted on listener plc-line1")
}

test_coil_min_means_switch_on_only if {
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "write": {"coils": [{"start": 0, "end": 7, "min": 1}]}}}}}
	decide_with(write_coils(0, [1, 1]), g).allow
	denied(decide_with(write_coils(0, [1, 0]), g), "conduit.modbus.value", "write of 0 to coils 1 is below min 1 for listener plc-line1")
}

## FC 22 mask write register

mask_grants := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "write": {"holding_registers": [
	{"start": 10, "end": 19, "min": 4, "max": 1000},
	{"start": 30, "end": 30},
]}}}}}

mask(address, and_mask, or_mask) := mb(loopback, "write", "mask_write_register", {
	"unit": 1, "function": 22, "table": "holding_registers", "address": address, "quantity": 1,
	"values": [], "and_mask": and_mask, "or_mask": or_mask,
})

test_mask_forcing_a_value_in_range if {
	# and_mask 0: the result is or_mask, whatever the register held.
	decide_with(mask(12, 0, 500), mask_grants).allow
}

test_mask_keeping_low_bits_in_range if {
	# Keep bits 0..1, force bit 2: results 4..7.
	decide_with(mask(12, 3, 4), mask_grants).allow
}

test_mask_keeping_all_bits_exceeds_max if {
	d := decide_with(mask(12, 65535, 0), mask_grants)
	denied(d, "conduit.modbus.value", "mask write to holding_registers 12 (results 0..65535) exceeds max 1000 for listener plc-line1")
	d.exception_code == 3
}

test_mask_result_below_min if {
	denied(decide_with(mask(12, 1, 2), mask_grants), "conduit.modbus.value", "mask write to holding_registers 12 (results 2..3) is below min 4 for listener plc-line1")
}

test_mask_on_unlimited_register if {
	decide_with(mask(30, 65535, 0), mask_grants).allow
}

test_mask_outside_the_ranges if {
	denied(decide_with(mask(40, 0, 1), mask_grants), "conduit.modbus.write", "write to holding_registers 40 is not granted on listener plc-line1")
}

## FC 23 read/write multiple registers

rw(read_address, read_quantity, address, values) := mb(loopback, "write", "read_write_multiple_registers", {
	"unit": 1, "function": 23, "table": "holding_registers",
	"address": address, "quantity": count(values), "values": values,
	"read": {"address": read_address, "quantity": read_quantity},
	"write": {"address": address, "quantity": count(values), "values": values},
})

test_read_write_allowed if {
	decide(rw(0, 10, 10, [1, 2])).allow
}

test_read_write_read_half_not_granted if {
	denied(decide(rw(95, 10, 10, [1])), "conduit.modbus.read", "read of holding_registers 95..104 is not granted on listener plc-line1")
}

test_read_write_write_half_not_granted if {
	denied(decide(rw(0, 10, 20, [1])), "conduit.modbus.write", "write to holding_registers 20 is not granted on listener plc-line1")
}

## FC 20/21 file records, FC 24 FIFO

file_grants := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {
	"units": [1],
	"read": {"file": [{"file": 4, "start": 0, "end": 99}], "fifo": [{"start": 200, "end": 201}]},
	"write": {"file": [{"file": 4, "start": 10, "end": 19, "max": 500}]},
}}}}

read_file(records) := mb(loopback, "read", "read_file_record", {"unit": 1, "function": 20, "table": "file", "file_records": records})

write_file(records) := mb(loopback, "write", "write_file_record", {"unit": 1, "function": 21, "table": "file", "file_records": records})

test_read_file_records if {
	decide_with(read_file([{"file": 4, "record": 0, "length": 10}, {"file": 4, "record": 90, "length": 10}]), file_grants).allow
}

test_read_file_record_not_granted if {
	x := read_file([{"file": 4, "record": 0, "length": 10}, {"file": 5, "record": 0, "length": 2}])
	denied(decide_with(x, file_grants), "conduit.modbus.read", "read of file 5 records 0..1 is not granted on listener plc-line1")
}

test_read_file_without_records if {
	denied(decide_with(read_file([]), file_grants), "conduit.modbus.read", "function 20 (read file record) does not read a data table the policy knows")
}

test_write_file_record if {
	decide_with(write_file([{"file": 4, "record": 10, "length": 2, "values": [1, 500]}]), file_grants).allow
}

test_write_file_record_not_granted if {
	x := write_file([{"file": 4, "record": 18, "length": 3, "values": [1, 2, 3]}])
	denied(decide_with(x, file_grants), "conduit.modbus.write", "write to file 4 records 18..20 is not granted on listener plc-line1")
}

test_write_file_record_over_max if {
	x := write_file([{"file": 4, "record": 10, "length": 2, "values": [1, 501]}])
	denied(decide_with(x, file_grants), "conduit.modbus.value", "write of 501 to file 4 record 11 exceeds max 500 for listener plc-line1")
}

test_write_file_record_malformed if {
	x := write_file([{"file": 4, "record": 10, "length": 2, "values": [1]}])
	denied(decide_with(x, file_grants), "conduit.modbus.malformed", "file 4 record 10 carries 1 values for length 2")
}

test_write_empty_file_record if {
	x := write_file([{"file": 4, "record": 10, "length": 0, "values": []}])
	denied(decide_with(x, file_grants), "conduit.modbus.malformed", "file 4 record 10 is empty")
}

test_write_file_without_records if {
	denied(decide_with(write_file([]), file_grants), "conduit.modbus.write", "function 21 (write file record) does not write a data table the policy knows")
}

test_read_fifo if {
	x := mb(loopback, "read", "read_fifo_queue", {"unit": 1, "function": 24, "table": "fifo", "address": 201})
	decide_with(x, file_grants).allow
	y := mb(loopback, "read", "read_fifo_queue", {"unit": 1, "function": 24, "table": "fifo", "address": 202})
	denied(decide_with(y, file_grants), "conduit.modbus.read", "read of fifo 202 is not granted on listener plc-line1")
}

## Diagnostics and other function codes

test_echo_allowed if {
	decide(diag(loopback, 0)).allow
}

test_force_listen_only_denied if {
	d := decide(diag(loopback, 4))
	denied(d, "conduit.modbus.function", "function 8 subfunction 4 (force listen only) is not allowed on listener plc-line1")
	d.exception_code == 1
}

test_restart_denied if {
	denied(decide(diag(loopback, 1)), "conduit.modbus.function", "function 8 subfunction 1 (restart communications option) is not allowed on listener plc-line1")
}

test_unknown_subfunction_denied if {
	denied(decide(diag(loopback, 99)), "conduit.modbus.function", "function 8 subfunction 99 is not allowed on listener plc-line1")
}

test_umas_denied if {
	x := mb(loopback, "other", "unknown_function", {"unit": 1, "function": 90})
	denied(decide(x), "conduit.modbus.function", "function 90 (UMAS, Schneider Electric programming) is not allowed on listener plc-line1")
}

test_unknown_function_denied if {
	x := mb(loopback, "other", "unknown_function", {"unit": 1, "function": 99})
	denied(decide(x), "conduit.modbus.function", "function 99 is not allowed on listener plc-line1")
}

test_canopen_denied if {
	x := mb(loopback, "other", "encapsulated_interface_transport", {"unit": 1, "function": 43, "subfunction": 13})
	denied(decide(x), "conduit.modbus.function", "function 43 subfunction 13 (CANopen general reference) is not allowed on listener plc-line1")
}

test_device_identification_needs_listing if {
	x := mb(loopback, "diagnostic", "read_device_identification", {"unit": 1, "function": 43, "subfunction": 14, "device_id_code": 1, "object_id": 0})
	denied(decide(x), "conduit.modbus.function", "function 43 subfunction 14 (read device identification) is not allowed on listener plc-line1")
}

test_function_without_subfunction_listed if {
	g := {"plc-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1], "functions": [{"function": 17}, {"function": 8}]}}}}
	decide_with(mb(loopback, "diagnostic", "report_server_id", {"unit": 1, "function": 17}), g).allow

	# {"function": 8} without subfunctions allows no sub-function.
	denied(decide_with(diag(loopback, 0), g), "conduit.modbus.function", "function 8 subfunction 0 (return query data (echo)) is not allowed on listener plc-line1")
}

test_unknown_access if {
	x := mb(loopback, "admin", "x", {"unit": 1, "function": 3})
	denied(decide(x), "conduit.modbus.access", "operation access admin is not known to the policy")
}
