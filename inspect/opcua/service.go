package opcua

import (
	"reflect"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// Service describes one standard service request (Part 4 §5): its name as
// in the specification, the snake_case operation name, the policy access
// class and the numeric id of its binary encoding (Part 6 §5.2.2.15).
type Service struct {
	Name   string // "Write", "Read", ... (without "Request")
	OpName string // "write", "read", ...
	TypeID uint32 // e.g. 673 for WriteRequest_Encoding_DefaultBinary
	Access inspect.Access

	goType reflect.Type // gopcua type whose fields give the layout
	schema *schema
	// decode fills the OPCUA section for the fully decoded services; the
	// others are validated against their schema only.
	decode func(d *Decoder, r *reader)
}

// services lists every standard service request. Access follows the issue:
// read for data and metadata reads, browsing, discovery and subscriptions;
// write for anything that changes values, history, the address space or the
// server registry; other for session and channel management (and, in
// Lookup, for any id not listed here).
var services = []*Service{
	// Discovery service set (Part 4 §5.4).
	svc("FindServers", "find_servers", id.FindServersRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.FindServersRequest{}),
	svc("FindServersOnNetwork", "find_servers_on_network", id.FindServersOnNetworkRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.FindServersOnNetworkRequest{}),
	svc("GetEndpoints", "get_endpoints", id.GetEndpointsRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.GetEndpointsRequest{}),
	svc("RegisterServer", "register_server", id.RegisterServerRequest_Encoding_DefaultBinary, inspect.AccessWrite, ua.RegisterServerRequest{}),
	svc("RegisterServer2", "register_server2", id.RegisterServer2Request_Encoding_DefaultBinary, inspect.AccessWrite, ua.RegisterServer2Request{}),
	// SecureChannel service set (Part 4 §5.5).
	svc("OpenSecureChannel", "open_secure_channel", id.OpenSecureChannelRequest_Encoding_DefaultBinary, inspect.AccessOther, ua.OpenSecureChannelRequest{}),
	svc("CloseSecureChannel", "close_secure_channel", id.CloseSecureChannelRequest_Encoding_DefaultBinary, inspect.AccessOther, ua.CloseSecureChannelRequest{}),
	// Session service set (Part 4 §5.6).
	svc("CreateSession", "create_session", id.CreateSessionRequest_Encoding_DefaultBinary, inspect.AccessOther, ua.CreateSessionRequest{}),
	svc("ActivateSession", "activate_session", id.ActivateSessionRequest_Encoding_DefaultBinary, inspect.AccessOther, ua.ActivateSessionRequest{}),
	svc("CloseSession", "close_session", id.CloseSessionRequest_Encoding_DefaultBinary, inspect.AccessOther, ua.CloseSessionRequest{}),
	svc("Cancel", "cancel", id.CancelRequest_Encoding_DefaultBinary, inspect.AccessOther, ua.CancelRequest{}),
	// NodeManagement service set (Part 4 §5.7).
	svc("AddNodes", "add_nodes", id.AddNodesRequest_Encoding_DefaultBinary, inspect.AccessWrite, ua.AddNodesRequest{}),
	svc("AddReferences", "add_references", id.AddReferencesRequest_Encoding_DefaultBinary, inspect.AccessWrite, ua.AddReferencesRequest{}),
	svc("DeleteNodes", "delete_nodes", id.DeleteNodesRequest_Encoding_DefaultBinary, inspect.AccessWrite, ua.DeleteNodesRequest{}),
	svc("DeleteReferences", "delete_references", id.DeleteReferencesRequest_Encoding_DefaultBinary, inspect.AccessWrite, ua.DeleteReferencesRequest{}),
	// View service set (Part 4 §5.8).
	svc("Browse", "browse", id.BrowseRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.BrowseRequest{}),
	svc("BrowseNext", "browse_next", id.BrowseNextRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.BrowseNextRequest{}),
	svc("TranslateBrowsePathsToNodeIds", "translate_browse_paths_to_node_ids", id.TranslateBrowsePathsToNodeIDsRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.TranslateBrowsePathsToNodeIDsRequest{}),
	svc("RegisterNodes", "register_nodes", id.RegisterNodesRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.RegisterNodesRequest{}),
	svc("UnregisterNodes", "unregister_nodes", id.UnregisterNodesRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.UnregisterNodesRequest{}),
	// Query service set (Part 4 §5.9).
	svc("QueryFirst", "query_first", id.QueryFirstRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.QueryFirstRequest{}),
	svc("QueryNext", "query_next", id.QueryNextRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.QueryNextRequest{}),
	// Attribute service set (Part 4 §5.10).
	svc("Read", "read", id.ReadRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.ReadRequest{}),
	svc("HistoryRead", "history_read", id.HistoryReadRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.HistoryReadRequest{}),
	svc("Write", "write", id.WriteRequest_Encoding_DefaultBinary, inspect.AccessWrite, ua.WriteRequest{}),
	svc("HistoryUpdate", "history_update", id.HistoryUpdateRequest_Encoding_DefaultBinary, inspect.AccessWrite, ua.HistoryUpdateRequest{}),
	// Method service set (Part 4 §5.11).
	svc("Call", "call", id.CallRequest_Encoding_DefaultBinary, inspect.AccessWrite, ua.CallRequest{}),
	// MonitoredItem service set (Part 4 §5.12).
	svc("CreateMonitoredItems", "create_monitored_items", id.CreateMonitoredItemsRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.CreateMonitoredItemsRequest{}),
	svc("ModifyMonitoredItems", "modify_monitored_items", id.ModifyMonitoredItemsRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.ModifyMonitoredItemsRequest{}),
	svc("SetMonitoringMode", "set_monitoring_mode", id.SetMonitoringModeRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.SetMonitoringModeRequest{}),
	svc("SetTriggering", "set_triggering", id.SetTriggeringRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.SetTriggeringRequest{}),
	svc("DeleteMonitoredItems", "delete_monitored_items", id.DeleteMonitoredItemsRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.DeleteMonitoredItemsRequest{}),
	// Subscription service set (Part 4 §5.13).
	svc("CreateSubscription", "create_subscription", id.CreateSubscriptionRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.CreateSubscriptionRequest{}),
	svc("ModifySubscription", "modify_subscription", id.ModifySubscriptionRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.ModifySubscriptionRequest{}),
	svc("SetPublishingMode", "set_publishing_mode", id.SetPublishingModeRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.SetPublishingModeRequest{}),
	svc("Publish", "publish", id.PublishRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.PublishRequest{}),
	svc("Republish", "republish", id.RepublishRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.RepublishRequest{}),
	svc("TransferSubscriptions", "transfer_subscriptions", id.TransferSubscriptionsRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.TransferSubscriptionsRequest{}),
	svc("DeleteSubscriptions", "delete_subscriptions", id.DeleteSubscriptionsRequest_Encoding_DefaultBinary, inspect.AccessRead, ua.DeleteSubscriptionsRequest{}),
}

func svc(name, op string, typeID uint32, access inspect.Access, v any) *Service {
	return &Service{Name: name, OpName: op, TypeID: typeID, Access: access, goType: reflect.TypeOf(v)}
}

var serviceByID = func() map[uint32]*Service {
	m := make(map[uint32]*Service, len(services))
	for _, s := range services {
		m[s.TypeID] = s
	}
	// Decoders of the services that are decoded fully (service_decode.go).
	m[id.WriteRequest_Encoding_DefaultBinary].decode = decodeWrite
	m[id.CallRequest_Encoding_DefaultBinary].decode = decodeCall
	m[id.AddNodesRequest_Encoding_DefaultBinary].decode = decodeAddNodes
	m[id.AddReferencesRequest_Encoding_DefaultBinary].decode = decodeAddReferences
	m[id.DeleteNodesRequest_Encoding_DefaultBinary].decode = decodeDeleteNodes
	m[id.DeleteReferencesRequest_Encoding_DefaultBinary].decode = decodeDeleteReferences
	m[id.HistoryUpdateRequest_Encoding_DefaultBinary].decode = decodeHistoryUpdate
	m[id.ActivateSessionRequest_Encoding_DefaultBinary].decode = decodeActivateSession
	return m
}()

// Services returns the table of standard service requests (do not modify).
func Services() []*Service { return services }

// LookupService returns the service whose request has the given binary
// encoding id, or nil: an unknown id is a deny-by-default "other".
func LookupService(typeID uint32) *Service { return serviceByID[typeID] }
