# Modbus/TCP checks of the reference policy (package conduit).
package conduit

# Tables a grant may list under "read" and under "write".
read_tables := {"coils", "discrete_inputs", "input_registers", "holding_registers", "file", "fifo"}

write_tables := {"coils", "holding_registers", "file"}

# Tables addressed by address and quantity.
ranged_tables := {"coils", "discrete_inputs", "input_registers", "holding_registers"}

# modbus_allows(m): m, the modbus section of a grant, allows the operation:
# the unit is listed, a broadcast write is explicitly allowed, and the access
# is granted: reads by "read" ranges, writes by "write" ranges and value
# limits, diagnostics and other function codes by "functions".
modbus_allows(m) if {
	is_object(m)
	input.modbus.unit in object.get(m, "units", [])
	broadcast_allowed(m)
	access_allowed(m)
}

broadcast_allowed(_) if input.modbus.unit != 0

broadcast_allowed(_) if input.operation.access != "write"

broadcast_allowed(m) if m.allow_broadcast == true

access_allowed(m) if {
	input.operation.access == "read"
	read_allowed(object.get(m, "read", {}))
}

access_allowed(m) if {
	input.operation.access == "write"
	write_allowed(m)
}

access_allowed(m) if {
	input.operation.access in {"diagnostic", "other"}
	function_granted(m)
}

## Reads

read_allowed(section) if {
	t := input.modbus.table
	t in ranged_tables
	range_granted(section, t, input.modbus.address, input.modbus.quantity)
}

read_allowed(section) if {
	input.modbus.table == "fifo"
	range_granted(section, "fifo", input.modbus.address, 1)
}

read_allowed(section) if {
	input.modbus.table == "file"
	count(input.modbus.file_records) > 0
	every r in input.modbus.file_records {
		file_granted(section, r)
	}
}

# A request is granted when one listed range holds all of it: ranges are not
# merged (list adjacent areas as one range).
range_granted(section, table, address, quantity) if {
	some r in object.get(section, table, [])
	r.start <= address
	(address + quantity) - 1 <= r.end
}

file_granted(section, rec) if count(file_ranges(section, rec)) > 0

# The "file" entries of section that hold the whole record request.
file_ranges(section, rec) := [e |
	some e in object.get(section, "file", [])
	e.file == rec.file
	e.start <= rec.record
	(rec.record + rec.length) - 1 <= e.end
]

## Writes

# Every written value is checked at its own address: address+i receives
# values[i]. Each written address must be held by a write range, and every
# range holding it must admit the value (min/max, both optional). Ranges of
# one table should not overlap (validation rejects it); if they do, a value
# must satisfy all of them. The check works per range on the slice of values
# inside it (min and max of the slice), so a 1968-coil write costs no more
# than a single register. FC 23 also needs its read half granted; FC 22 is
# checked by mask_allowed.
write_allowed(m) if {
	input.modbus.function != 22
	t := input.modbus.table
	t in {"coils", "holding_registers"}
	fc23_read_allowed(m)
	n := count(input.modbus.values)
	n > 0
	n == input.modbus.quantity
	values_admitted(object.get(m, "write", {}), t, input.modbus.address, input.modbus.values)
}

write_allowed(m) if {
	input.modbus.function == 22
	input.modbus.table == "holding_registers"
	ranges := ranges_at(object.get(m, "write", {}), "holding_registers", input.modbus.address)
	count(ranges) > 0
	[lo, hi] := mask_results
	every r in ranges {
		admits(r, lo, hi)
	}
}

write_allowed(m) if {
	input.modbus.table == "file"
	count(input.modbus.file_records) > 0
	section := object.get(m, "write", {})
	every r in input.modbus.file_records {
		file_write_allowed(section, r)
	}
}

fc23_read_allowed(_) if input.modbus.function != 23

fc23_read_allowed(m) if {
	input.modbus.function == 23
	r := input.modbus.read
	range_granted(object.get(m, "read", {}), "holding_registers", r.address, r.quantity)
}

values_admitted(section, table, first, values) if {
	last := (first + count(values)) - 1
	ranges := ranges_over(section, table, first, last)
	not first_uncovered(ranges, first, last)
	every r in ranges {
		segment_admitted(r, first, last, values)
	}
}

# The ranges of section[table] that overlap first..last.
ranges_over(section, table, first, last) := [r |
	some r in object.get(section, table, [])
	r.start <= last
	first <= r.end
]

# The ranges of section[table] that hold address.
ranges_at(section, table, address) := ranges_over(section, table, address, address)

# The lowest address in first..last that no range holds (undefined when all
# are held): first itself, or just past the end of some range.
first_uncovered(ranges, first, last) := min(gaps) if {
	ends := {x | some r in ranges; x := r.end + 1}
	candidates := ends | {first}
	gaps := {x |
		some x in candidates
		first <= x
		x <= last
		not held(ranges, x)
	}
	count(gaps) > 0
}

held(ranges, x) if {
	some r in ranges
	r.start <= x
	x <= r.end
}

# The values written inside range r, and the address of the first of them.
segment(r, first, last, values) := [from, array.slice(values, from - first, (to - first) + 1)] if {
	from := max([r.start, first])
	to := min([r.end, last])
}

segment_admitted(r, first, last, values) if {
	[_, s] := segment(r, first, last, values)
	admits(r, min(s), max(s))
}

# Whether range r admits every value in lo..hi.
admits(r, lo, hi) if {
	object.get(r, "min", lo) <= lo
	hi <= object.get(r, "max", hi)
}

file_write_allowed(section, rec) if {
	count(rec.values) == rec.length
	rec.length > 0
	ranges := file_ranges(section, rec)
	count(ranges) > 0
	every e in ranges {
		admits(e, min(rec.values), max(rec.values))
	}
}

# FC 22 sets register := (current AND and_mask) OR (or_mask AND NOT
# and_mask). The proxy does not know the current value, so any result from
# lo (the bits or_mask forces, kept bits 0) to hi (kept bits 1) is possible,
# and the ranges holding the register must admit them all.
mask_results := [lo, hi] if {
	lo := bits.and(input.modbus.or_mask, bits.xor(input.modbus.and_mask, 65535))
	hi := bits.or(lo, input.modbus.and_mask)
}

## Diagnostics and other function codes

# An entry {"function": f} allows function f. A function with a sub-function
# (FC 8 diagnostics, FC 43 MEI type) is allowed only for the sub-functions
# the entry lists: there is no wildcard.
function_granted(m) if {
	some f in object.get(m, "functions", [])
	f.function == input.modbus.function
	subfunction_granted(f)
}

subfunction_granted(_) if not has_subfunction

subfunction_granted(f) if input.modbus.subfunction in object.get(f, "subfunctions", [])

has_subfunction if "subfunction" in object.keys(input.modbus)

## Reasons: the first check a grant fails, for the decision's reason.

modbus_violation(m) := deny("conduit.grant.protocol", sprintf("the grant has no modbus section for listener %s", [input.listener])) if {
	not is_object(m)
} else := deny("conduit.modbus.unit", sprintf("unit %d is not granted on listener %s", [input.modbus.unit, input.listener])) if {
	not input.modbus.unit in object.get(m, "units", [])
} else := deny("conduit.modbus.broadcast", sprintf("broadcast (unit 0) write is not allowed on listener %s", [input.listener])) if {
	not broadcast_allowed(m)
} else := read_violation(object.get(m, "read", {})) if {
	input.operation.access == "read"
} else := write_violation(m) if {
	input.operation.access == "write"
} else := deny_code("conduit.modbus.function", sprintf("%s is not allowed on listener %s", [function_desc, input.listener]), 1) if {
	input.operation.access in {"diagnostic", "other"}
} else := deny("conduit.modbus.access", sprintf("operation access %v is not known to the policy", [input.operation.access]))

read_violation(section) := deny_code("conduit.modbus.read", sprintf("read of %s %d..%d is not granted on listener %s", [t, a, (a + input.modbus.quantity) - 1, input.listener]), 2) if {
	t := input.modbus.table
	t in ranged_tables
	a := input.modbus.address
} else := deny_code("conduit.modbus.read", sprintf("read of fifo %d is not granted on listener %s", [input.modbus.address, input.listener]), 2) if {
	input.modbus.table == "fifo"
} else := deny_code("conduit.modbus.read", sprintf("read of file %d records %d..%d is not granted on listener %s", [r.file, r.record, (r.record + r.length) - 1, input.listener]), 2) if {
	input.modbus.table == "file"
	bad := [x | some x in input.modbus.file_records; not file_granted(section, x)]
	r := bad[0]
} else := deny("conduit.modbus.read", sprintf("%s does not read a data table the policy knows", [function_desc]))

write_violation(m) := deny_code("conduit.modbus.read", sprintf("read of holding_registers %d..%d is not granted on listener %s", [r.address, (r.address + r.quantity) - 1, input.listener]), 2) if {
	not fc23_read_allowed(m)
	r := input.modbus.read
} else := v if {
	input.modbus.function == 22
	v := mask_violation(object.get(m, "write", {}))
} else := deny_code("conduit.modbus.malformed", sprintf("the write carries %d values for quantity %d", [count(input.modbus.values), input.modbus.quantity]), 3) if {
	input.modbus.table in {"coils", "holding_registers"}
	count(input.modbus.values) != input.modbus.quantity
} else := deny_code("conduit.modbus.malformed", "the write carries no values", 3) if {
	input.modbus.table in {"coils", "holding_registers"}
	count(input.modbus.values) == 0
} else := values_violation(object.get(m, "write", {}), input.modbus.table, input.modbus.address, input.modbus.values) if {
	input.modbus.table in {"coils", "holding_registers"}
} else := v if {
	input.modbus.table == "file"
	v := file_write_violation(object.get(m, "write", {}))
} else := deny("conduit.modbus.write", sprintf("%s does not write a data table the policy knows", [function_desc]))

# The reason values (written from first on) are not admitted: the lowest
# address no range holds, or else the worst value of the lowest range whose
# limits it breaks (of overlapping ranges with the same start, which
# validation rejects, the first listed).
values_violation(section, table, first, values) := deny_code("conduit.modbus.write", sprintf("write to %s %d is not granted on listener %s", [table, x, input.listener]), 2) if {
	last := (first + count(values)) - 1
	x := first_uncovered(ranges_over(section, table, first, last), first, last)
} else := v if {
	last := (first + count(values)) - 1
	bad := [r | some r in ranges_over(section, table, first, last); not segment_admitted(r, first, last, values)]
	lowest := min({r.start | some r in bad})
	r := [x | some x in bad; x.start == lowest][0]
	[from, s] := segment(r, first, last, values)
	v := segment_violation(r, table, from, s)
}

# The largest value over max, or else the smallest under min, and where.
segment_violation(r, table, from, s) := limit_violation(r, sprintf("write of %d to %s %d", [hi, table, from + first_index(s, hi)]), hi, hi) if {
	hi := max(s)
	hi > object.get(r, "max", hi)
} else := limit_violation(r, sprintf("write of %d to %s %d", [lo, table, from + first_index(s, lo)]), lo, lo) if {
	lo := min(s)
}

first_index(a, x) := [i | some i, y in a; y == x][0]

limit_violation(r, what, _, hi) := deny_code("conduit.modbus.value", sprintf("%s exceeds max %d for listener %s", [what, r.max, input.listener]), 3) if {
	hi > object.get(r, "max", hi)
} else := deny_code("conduit.modbus.value", sprintf("%s is below min %d for listener %s", [what, r.min, input.listener]), 3)

mask_violation(section) := deny_code("conduit.modbus.write", sprintf("write to holding_registers %d is not granted on listener %s", [input.modbus.address, input.listener]), 2) if {
	count(ranges_at(section, "holding_registers", input.modbus.address)) == 0
} else := limit_violation(
	r,
	sprintf("mask write to holding_registers %d (results %d..%d)", [input.modbus.address, lo, hi]),
	lo, hi,
) if {
	[lo, hi] := mask_results
	bad := [x | some x in ranges_at(section, "holding_registers", input.modbus.address); not admits(x, lo, hi)]
	r := bad[0]
}

file_write_violation(section) := deny_code("conduit.modbus.write", sprintf("write to file %d records %d..%d is not granted on listener %s", [r.file, r.record, (r.record + r.length) - 1, input.listener]), 2) if {
	bad := [x | some x in input.modbus.file_records; not file_granted(section, x)]
	r := bad[0]
} else := deny_code("conduit.modbus.malformed", sprintf("file %d record %d carries %d values for length %d", [r.file, r.record, count(r.values), r.length]), 3) if {
	bad := [x | some x in input.modbus.file_records; count(x.values) != x.length]
	r := bad[0]
} else := deny_code("conduit.modbus.malformed", sprintf("file %d record %d is empty", [r.file, r.record]), 3) if {
	bad := [x | some x in input.modbus.file_records; x.length == 0]
	r := bad[0]
} else := bad[0] if {
	bad := [x |
		some r in input.modbus.file_records
		some e in file_ranges(section, r)
		not admits(e, min(r.values), max(r.values))
		x := segment_violation(e, sprintf("file %d record", [r.file]), r.record, r.values)
	]
	count(bad) > 0
}

# "function 8 subfunction 4 (force listen only)", "function 90 (UMAS, ...)".
function_desc := sprintf("function %d subfunction %d (%s)", [fc, sf, name]) if {
	fc := input.modbus.function
	sf := input.modbus.subfunction
	name := subfunction_names[fc][sf]
} else := sprintf("function %d subfunction %d", [input.modbus.function, input.modbus.subfunction]) if {
	has_subfunction
} else := sprintf("function %d (%s)", [input.modbus.function, name]) if {
	name := function_names[input.modbus.function]
} else := sprintf("function %d", [input.modbus.function])

# Modbus Application Protocol Specification V1.1b3, section 6, and the
# vendor programming codes most often met on plant networks.
function_names := {
	1: "read coils",
	2: "read discrete inputs",
	3: "read holding registers",
	4: "read input registers",
	5: "write single coil",
	6: "write single register",
	7: "read exception status",
	8: "diagnostics",
	11: "get comm event counter",
	12: "get comm event log",
	15: "write multiple coils",
	16: "write multiple registers",
	17: "report server id",
	20: "read file record",
	21: "write file record",
	22: "mask write register",
	23: "read/write multiple registers",
	24: "read fifo queue",
	43: "encapsulated interface transport",
	90: "UMAS, Schneider Electric programming",
	91: "Schneider Electric programming",
	125: "Schneider Electric programming",
	126: "Schneider Electric programming",
}

subfunction_names := {
	8: {
		0: "return query data (echo)",
		1: "restart communications option",
		2: "return diagnostic register",
		3: "change ascii input delimiter",
		4: "force listen only",
		10: "clear counters and diagnostic register",
		11: "return bus message count",
		12: "return bus communication error count",
		13: "return bus exception error count",
		14: "return server message count",
		15: "return server no response count",
		16: "return server NAK count",
		17: "return server busy count",
		18: "return bus character overrun count",
		20: "clear overrun counter and flag",
	},
	43: {
		13: "CANopen general reference",
		14: "read device identification",
	},
}
