# OPC UA checks of the reference policy (package conduit).
package conduit

# OPC UA services by what they do (OPC 10000-4, section 5). Session and
# discovery services are allowed to every client with an opcua grant: without
# them nothing else works, and they change nothing on the server.
session_services := {
	"FindServers", "FindServersOnNetwork", "GetEndpoints",
	"OpenSecureChannel", "CloseSecureChannel",
	"CreateSession", "ActivateSession", "CloseSession", "Cancel",
}

# Services allowed before a session exists: the user name check skips them.
pre_session_services := {
	"FindServers", "FindServersOnNetwork", "GetEndpoints",
	"OpenSecureChannel", "CloseSecureChannel", "CreateSession",
}

read_services := {"Read", "HistoryRead"}

browse_services := {
	"Browse", "BrowseNext", "TranslateBrowsePathsToNodeIds",
	"RegisterNodes", "UnregisterNodes", "QueryFirst", "QueryNext",
}

subscription_services := {
	"CreateSubscription", "ModifySubscription", "SetPublishingMode",
	"Publish", "Republish", "TransferSubscriptions", "DeleteSubscriptions",
	"CreateMonitoredItems", "ModifyMonitoredItems", "SetMonitoringMode",
	"SetTriggering", "DeleteMonitoredItems",
}

node_management_services := {"AddNodes", "AddReferences", "DeleteNodes", "DeleteReferences"}

# opcua_allows(o): o, the opcua section of a grant, allows the operation. An
# opaque (SignAndEncrypt) message can only be allowed as a whole, by the
# grant's "opaque" entry; everything else is checked service by service.
opcua_allows(o) if {
	is_object(o)
	input.opcua.opaque == true
	opaque_allowed(object.get(o, "opaque", null))
}

opcua_allows(o) if {
	is_object(o)
	input.opcua.opaque == false
	user_allowed(o)
	service_allowed(o, input.opcua.service)
}

# On a Sign channel only the OpenSecureChannel is opaque: under any security
# policy but None its body is encrypted with the receiver's public key (OPC
# 10000-6, 6.7.4), whatever the mode. Every later message is readable and is
# checked service by service, so the OPN is allowed like the other session
# services: it changes nothing on the server.
opcua_allows(o) if {
	is_object(o)
	input.opcua.opaque == true
	input.opcua.security_mode == "sign"
	input.opcua.service == "OpenSecureChannel"
}

opaque_allowed(op) if {
	is_object(op)
	input.opcua.security_policy in object.get(op, "security_policies", [])
	thumbprint_listed(op)
}

thumbprint_listed(op) if {
	cert := input.opcua.client_certificate
	is_object(cert)
	lower(cert.thumbprint) in {lower(t) | some t in object.get(op, "thumbprints", [])}
}

# "user_names" restricts the session user; without it any session may run.
user_allowed(o) if count(object.get(o, "user_names", [])) == 0

user_allowed(_) if input.opcua.service in pre_session_services

user_allowed(o) if {
	s := input.opcua.session
	is_object(s)
	s.user_name in o.user_names
}

service_allowed(_, s) if s in session_services

service_allowed(o, s) if {
	s in read_services
	o.read == true
}

service_allowed(o, s) if {
	s in browse_services
	o.browse == true
}

service_allowed(o, s) if {
	s in subscription_services
	o.subscribe == true
}

service_allowed(o, "Write") if {
	count(input.opcua.writes) > 0
	every w in input.opcua.writes {
		opcua_write_allowed(o, w)
	}
}

service_allowed(o, "Call") if {
	count(input.opcua.calls) > 0
	every c in input.opcua.calls {
		call_granted(o, c)
	}
}

service_allowed(o, s) if {
	s in node_management_services
	s in object.get(o, "node_management", [])
}

service_allowed(o, "HistoryUpdate") if {
	count(input.opcua.writes) > 0
	every w in input.opcua.writes {
		w.node_id in object.get(o, "history_update", [])
	}
}

# A write is allowed when an entry for its node lists its attribute
# ("attributes", default ["Value"]) and admits its value.
opcua_write_allowed(o, w) if {
	some e in write_entries(o, w)
	w.attribute in object.get(e, "attributes", ["Value"])
	value_admitted(e, w.value)
}

write_entries(o, w) := [e | some e in object.get(o, "writes", []); e.node_id == w.node_id]

# Without min/max any value may be written; with them only numbers (or
# arrays of numbers) inside the limits.
value_admitted(e, _) if not has_limits(e)

value_admitted(e, v) if {
	has_limits(e)
	is_number(v)
	within_limits(e, v)
}

value_admitted(e, v) if {
	has_limits(e)
	is_array(v)
	every x in v {
		is_number(x)
		within_limits(e, x)
	}
}

has_limits(e) if "min" in object.keys(e)

has_limits(e) if "max" in object.keys(e)

within_limits(e, x) if {
	object.get(e, "min", x) <= x
	x <= object.get(e, "max", x)
}

call_granted(o, c) if {
	some e in object.get(o, "calls", [])
	e.object_id == c.object_id
	e.method_id == c.method_id
}

## Reasons

opcua_violation(o) := deny("conduit.grant.protocol", sprintf("the grant has no opcua section for listener %s", [input.listener])) if {
	not is_object(o)
} else := opaque_violation(object.get(o, "opaque", null)) if {
	input.opcua.opaque == true
} else := deny("conduit.opcua.user", sprintf("session user %s is not allowed on listener %s", [user, input.listener])) if {
	not user_allowed(o)
	user := session_user
} else := service_violation(o, input.opcua.service)

session_user := sprintf("%q", [input.opcua.session.user_name]) if {
	input.opcua.session.user_name != ""
} else := "(anonymous or unknown)"

opaque_violation(op) := deny("conduit.opcua.opaque", sprintf("encrypted (SignAndEncrypt) messages cannot be inspected and are not granted on listener %s", [input.listener])) if {
	not is_object(op)
} else := deny("conduit.opcua.opaque", sprintf("security policy %s is not granted for encrypted messages on listener %s", [input.opcua.security_policy, input.listener])) if {
	not input.opcua.security_policy in object.get(op, "security_policies", [])
} else := deny("conduit.opcua.opaque", sprintf("client certificate %s is not granted for encrypted messages on listener %s", [client_thumbprint, input.listener]))

client_thumbprint := input.opcua.client_certificate.thumbprint if {
	input.opcua.client_certificate.thumbprint != ""
} else := "(none)"

service_violation(o, s) := deny("conduit.opcua.service", sprintf("OPC UA %s is not granted on listener %s", [s, input.listener])) if {
	s in (read_services | browse_services) | subscription_services
} else := v if {
	s == "Write"
	v := opcua_write_violation(o)
} else := v if {
	s == "Call"
	v := call_violation(o)
} else := deny("conduit.opcua.address_space", sprintf("address-space change %s is not granted on listener %s", [s, input.listener])) if {
	s in node_management_services
} else := deny("conduit.opcua.history_update", sprintf("HistoryUpdate of node %s is not granted on listener %s", [w.node_id, input.listener])) if {
	s == "HistoryUpdate"
	bad := [x | some x in input.opcua.writes; not x.node_id in object.get(o, "history_update", [])]
	w := bad[0]
} else := deny("conduit.opcua.service", sprintf("OPC UA service %s is not allowed on listener %s", [s, input.listener]))

opcua_write_violation(o) := bad[0] if {
	bad := [x |
		some w in input.opcua.writes
		not opcua_write_allowed(o, w)
		x := write_item_violation(o, w)
	]
	count(bad) > 0
} else := deny("conduit.opcua.write", sprintf("a Write without write items is not allowed on listener %s", [input.listener]))

write_item_violation(o, w) := deny("conduit.opcua.write", sprintf("write to node %s is not granted on listener %s", [w.node_id, input.listener])) if {
	count(write_entries(o, w)) == 0
} else := deny("conduit.opcua.write", sprintf("write of attribute %s of node %s is not granted on listener %s", [w.attribute, w.node_id, input.listener])) if {
	count(attribute_entries(o, w)) == 0
} else := deny("conduit.opcua.value", sprintf("write of %v to node %s exceeds max %v for listener %s", [w.value, w.node_id, e.max, input.listener])) if {
	e := attribute_entries(o, w)[0]
	is_number(w.value)
	w.value > object.get(e, "max", w.value)
} else := deny("conduit.opcua.value", sprintf("write of %v to node %s is below min %v for listener %s", [w.value, w.node_id, e.min, input.listener])) if {
	e := attribute_entries(o, w)[0]
	is_number(w.value)
	w.value < object.get(e, "min", w.value)
} else := deny("conduit.opcua.value", sprintf("write of %v (%s) to node %s is outside its limits for listener %s", [w.value, type_name(w.value), w.node_id, input.listener]))

attribute_entries(o, w) := [e | some e in write_entries(o, w); w.attribute in object.get(e, "attributes", ["Value"])]

call_violation(o) := deny("conduit.opcua.call", sprintf("call of method %s on object %s is not granted on listener %s", [c.method_id, c.object_id, input.listener])) if {
	bad := [x | some x in input.opcua.calls; not call_granted(o, x)]
	c := bad[0]
} else := deny("conduit.opcua.call", sprintf("a Call without method calls is not allowed on listener %s", [input.listener]))
