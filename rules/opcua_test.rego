# Tests of the OPC UA checks: services, writes with limits, method calls,
# address-space changes, HistoryUpdate, encrypted channels, session users.
package conduit_test

ua(client, service, extra) := {
	"protocol": "opcua",
	"listener": "opcua-line1",
	"upstream": "127.0.0.1:4840",
	"client": client,
	"operation": {"access": ua_access(service), "name": service},
	"opcua": object.union(
		{
			"service": service,
			"type_id": 0,
			"security_mode": "none",
			"security_policy": "http://opcfoundation.org/UA/SecurityPolicy#None",
			"opaque": false,
			"client_certificate": null,
			"session": {"identity_type": "anonymous", "user_name": ""},
			"writes": [],
			"calls": [],
			"nodes": [],
		},
		extra,
	),
}

ua_access(s) := "write" if s in {"Write", "Call", "AddNodes", "HistoryUpdate"}

else := "read"

setpoint(value) := {"node_id": "ns=2;s=Line1.Setpoint", "attribute": "Value", "index_range": "", "value": value, "type": "Double"}

ua_write(client, writes) := ua(client, "Write", {"writes": writes})

# The engineering station: certificate CN eng-ws-01, session user engineer1.
eng_ws := mtls("10.20.3.4", "eng-ws-01", [], [])

as_user(x, user) := object.union(x, {"opcua": {"session": {"identity_type": "username", "user_name": user}}})

## Services

test_read_browse_subscribe if {
	every s in ["Read", "HistoryRead", "Browse", "BrowseNext", "TranslateBrowsePathsToNodeIds", "CreateSubscription", "Publish", "CreateMonitoredItems"] {
		decide(ua(loopback, s, {})).allow
	}
}

test_session_services_for_every_opcua_grant if {
	g := {"opcua-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "opcua": {}}}}
	every s in ["GetEndpoints", "OpenSecureChannel", "CreateSession", "ActivateSession", "CloseSession", "CloseSecureChannel"] {
		decide_with(ua(loopback, s, {}), g).allow
	}
}

test_services_need_their_grant if {
	g := {"opcua-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "opcua": {"browse": true}}}}
	decide_with(ua(loopback, "Browse", {}), g).allow
	denied(decide_with(ua(loopback, "Read", {}), g), "conduit.opcua.service", "OPC UA Read is not granted on listener opcua-line1")
	denied(decide_with(ua(loopback, "CreateSubscription", {}), g), "conduit.opcua.service", "OPC UA CreateSubscription is not granted on listener opcua-line1")
}

test_unknown_service if {
	denied(decide(ua(loopback, "RegisterServer", {})), "conduit.opcua.service", "OPC UA service RegisterServer is not allowed on listener opcua-line1")
}

test_opcua_input_on_modbus_only_grant if {
	g := {"opcua-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "modbus": {"units": [1]}}}}
	denied(decide_with(ua(loopback, "Read", {}), g), "conduit.grant.protocol", "the grant has no opcua section for listener opcua-line1")
}

## Writes (fixture: Setpoint 0..1000, Mode any value)

test_write_setpoint if {
	d := decide(ua_write(loopback, [setpoint(500)]))
	d.allow
	d.rule == "grant/demo-loopback"
}

test_write_setpoint_over_max if {
	denied(decide(ua_write(loopback, [setpoint(5000)])), "conduit.opcua.value", "write of 5000 to node ns=2;s=Line1.Setpoint exceeds max 1000 for listener opcua-line1")
}

test_write_setpoint_below_min if {
	denied(decide(ua_write(loopback, [setpoint(-0.5)])), "conduit.opcua.value", "write of -0.5 to node ns=2;s=Line1.Setpoint is below min 0 for listener opcua-line1")
}

test_write_non_number_to_limited_node if {
	denied(decide(ua_write(loopback, [setpoint("high")])), "conduit.opcua.value", "write of high (string) to node ns=2;s=Line1.Setpoint is outside its limits for listener opcua-line1")
}

test_write_array_within_limits if {
	decide(ua_write(loopback, [setpoint([1, 2.5, 1000])])).allow
	denied(decide(ua_write(loopback, [setpoint([1, 2000])])), "conduit.opcua.value", "write of [1, 2000] (array) to node ns=2;s=Line1.Setpoint is outside its limits for listener opcua-line1")
}

test_write_without_limits_any_value if {
	mode := {"node_id": "ns=2;s=Line1.Mode", "attribute": "Value", "index_range": "", "value": "auto", "type": "String"}
	decide(ua_write(loopback, [mode])).allow
}

test_write_unknown_node if {
	w := {"node_id": "ns=2;s=Line1.Speed", "attribute": "Value", "index_range": "", "value": 1, "type": "Double"}
	denied(decide(ua_write(loopback, [setpoint(1), w])), "conduit.opcua.write", "write to node ns=2;s=Line1.Speed is not granted on listener opcua-line1")
}

test_write_attribute_not_granted if {
	w := object.union(setpoint("Setpoint"), {"attribute": "DisplayName", "type": "LocalizedText"})
	denied(decide(ua_write(loopback, [w])), "conduit.opcua.write", "write of attribute DisplayName of node ns=2;s=Line1.Setpoint is not granted on listener opcua-line1")
}

test_write_listed_attribute if {
	w := {"node_id": "ns=2;s=Line1.Description", "attribute": "Description", "index_range": "", "value": "line 1", "type": "LocalizedText"}
	decide(as_user(ua_write(eng_ws, [w]), "engineer1")).allow
}

test_write_without_items if {
	denied(decide(ua_write(loopback, [])), "conduit.opcua.write", "a Write without write items is not allowed on listener opcua-line1")
}

## Method calls

reset_counters := {"object_id": "ns=2;s=Line1", "method_id": "ns=2;s=Line1.ResetCounters", "arguments": []}

test_call_granted_method if {
	decide(ua(loopback, "Call", {"calls": [reset_counters]})).allow
}

test_call_other_method if {
	stop := {"object_id": "ns=2;s=Line1", "method_id": "ns=2;s=Line1.Stop", "arguments": [true]}
	denied(decide(ua(loopback, "Call", {"calls": [reset_counters, stop]})), "conduit.opcua.call", "call of method ns=2;s=Line1.Stop on object ns=2;s=Line1 is not granted on listener opcua-line1")
}

test_call_same_method_other_object if {
	c := object.union(reset_counters, {"object_id": "ns=2;s=Line2"})
	denied(decide(ua(loopback, "Call", {"calls": [c]})), "conduit.opcua.call", "call of method ns=2;s=Line1.ResetCounters on object ns=2;s=Line2 is not granted on listener opcua-line1")
}

test_call_without_calls if {
	denied(decide(ua(loopback, "Call", {})), "conduit.opcua.call", "a Call without method calls is not allowed on listener opcua-line1")
}

## Address space and history

add_node := {"node_id": "ns=2;s=Line1.New", "parent_id": "ns=2;s=Line1", "reference_type": "HasComponent", "node_class": "Variable", "browse_name": "2:New"}

test_address_space_changes_denied if {
	every s in ["AddNodes", "DeleteNodes", "AddReferences", "DeleteReferences"] {
		denied(decide(ua(loopback, s, {"nodes": [add_node]})), "conduit.opcua.address_space", sprintf("address-space change %s is not granted on listener opcua-line1", [s]))
	}
}

test_address_space_change_granted if {
	g := {"opcua-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "opcua": {"node_management": ["AddNodes"]}}}}
	decide_with(ua(loopback, "AddNodes", {"nodes": [add_node]}), g).allow
	denied(decide_with(ua(loopback, "DeleteNodes", {"nodes": [add_node]}), g), "conduit.opcua.address_space", "address-space change DeleteNodes is not granted on listener opcua-line1")
}

history(node) := {"node_id": node, "attribute": "Value", "index_range": "", "value": 7, "type": "Int32"}

test_history_update_denied_by_default if {
	denied(decide(ua(loopback, "HistoryUpdate", {"writes": [history("ns=2;s=Line1.Counter")]})), "conduit.opcua.history_update", "HistoryUpdate of node ns=2;s=Line1.Counter is not granted on listener opcua-line1")
}

test_history_update_granted_node if {
	x := as_user(ua(eng_ws, "HistoryUpdate", {"writes": [history("ns=2;s=Line1.Counter")]}), "engineer1")
	decide(x).allow
	y := as_user(ua(eng_ws, "HistoryUpdate", {"writes": [history("ns=2;s=Line1.Counter"), history("ns=2;s=Line1.Setpoint")]}), "engineer1")
	denied(decide(y), "conduit.opcua.history_update", "HistoryUpdate of node ns=2;s=Line1.Setpoint is not granted on listener opcua-line1")
}

test_history_update_without_items if {
	x := as_user(ua(eng_ws, "HistoryUpdate", {}), "engineer1")
	denied(decide(x), "conduit.opcua.service", "OPC UA service HistoryUpdate is not allowed on listener opcua-line1")
}

## Session users (engineering-station: user_names ["engineer1"])

test_listed_user if {
	decide(as_user(ua(eng_ws, "Read", {}), "engineer1")).allow
	decide(as_user(ua(eng_ws, "ActivateSession", {}), "engineer1")).allow
}

test_other_user if {
	denied(decide(as_user(ua(eng_ws, "Read", {}), "operator1")), "conduit.opcua.user", "session user \"operator1\" is not allowed on listener opcua-line1")
}

test_anonymous_session if {
	denied(decide(ua(eng_ws, "Read", {})), "conduit.opcua.user", "session user (anonymous or unknown) is not allowed on listener opcua-line1")
	denied(decide(ua(eng_ws, "Read", {"session": null})), "conduit.opcua.user", "session user (anonymous or unknown) is not allowed on listener opcua-line1")
}

test_pre_session_services_skip_the_user_check if {
	decide(ua(eng_ws, "GetEndpoints", {"session": null})).allow
	decide(ua(eng_ws, "CreateSession", {"session": null})).allow
}

## Encrypted (SignAndEncrypt) channels: opaque

basic256 := "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"

opaque(client, policy, thumbprint) := ua(client, "", {
	"opaque": true,
	"security_mode": "sign_and_encrypt",
	"security_policy": policy,
	"client_certificate": {"subject": "CN=eng-ws-01", "thumbprint": thumbprint},
	"session": null,
})

test_opaque_denied_without_grant if {
	denied(decide(opaque(loopback, basic256, "5d41402abc4b2a76b9719d911017c592ae5a1f3c")), "conduit.opcua.opaque", "encrypted (SignAndEncrypt) messages cannot be inspected and are not granted on listener opcua-line1")
}

test_opaque_with_pinned_certificate if {
	d := decide(opaque(eng_ws, basic256, "5D41402ABC4B2A76B9719D911017C592AE5A1F3C"))
	d.allow
	d.rule == "grant/engineering-station"
}

test_opaque_other_security_policy if {
	p := "http://opcfoundation.org/UA/SecurityPolicy#Basic128Rsa15"
	denied(decide(opaque(eng_ws, p, "5d41402abc4b2a76b9719d911017c592ae5a1f3c")), "conduit.opcua.opaque", sprintf("security policy %s is not granted for encrypted messages on listener opcua-line1", [p]))
}

test_opaque_other_certificate if {
	denied(decide(opaque(eng_ws, basic256, "aaaa")), "conduit.opcua.opaque", "client certificate aaaa is not granted for encrypted messages on listener opcua-line1")
}

test_opaque_without_certificate if {
	x := object.union(opaque(eng_ws, basic256, ""), {"opcua": {"client_certificate": null}})
	denied(decide(x), "conduit.opcua.opaque", "client certificate (none) is not granted for encrypted messages on listener opcua-line1")
}

## Signed (Sign) channels: only the OpenSecureChannel is opaque

signed_open(client, service) := object.union(opaque(client, basic256, "aaaa"), {"opcua": {"service": service, "security_mode": "sign"}})

test_signed_open_secure_channel_allowed if {
	decide(signed_open(loopback, "OpenSecureChannel")).allow
}

test_signed_opaque_message_denied if {
	# Nothing else on a Sign channel is opaque; if it were, it would need the
	# opaque grant like a SignAndEncrypt message.
	denied(decide(signed_open(loopback, "")), "conduit.opcua.opaque", "encrypted (SignAndEncrypt) messages cannot be inspected and are not granted on listener opcua-line1")
}

test_encrypted_open_secure_channel_needs_opaque_grant if {
	x := object.union(opaque(loopback, basic256, "aaaa"), {"opcua": {"service": "OpenSecureChannel"}})
	denied(decide(x), "conduit.opcua.opaque", "encrypted (SignAndEncrypt) messages cannot be inspected and are not granted on listener opcua-line1")
}

test_write_limit_max_only if {
	g := {"opcua-line1": {"g": {"clients": {"cidrs": ["127.0.0.0/8"]}, "opcua": {"writes": [{"node_id": "ns=2;s=Line1.Setpoint", "max": 10}]}}}}
	decide_with(ua_write(loopback, [setpoint(-100)]), g).allow
	denied(decide_with(ua_write(loopback, [setpoint(11)]), g), "conduit.opcua.value", "write of 11 to node ns=2;s=Line1.Setpoint exceeds max 10 for listener opcua-line1")
}
