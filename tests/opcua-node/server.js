// A node-opcua server with the nodes of Conduit's reference policy, for the
// interop test in proxy/opcua_node_test.go. Every write and method call it
// receives is printed on stdout ("WRITE <node> <value>", "CALL <object>
// <method>"), so the Go test can show what reached the server.
//
// Usage: node server.js <port>   (prints "READY <endpoint url>" once started)
"use strict";
const {
    OPCUAServer, Variant, DataType, StatusCodes, MessageSecurityMode, SecurityPolicy,
} = require("node-opcua");

async function main() {
    const port = parseInt(process.argv[2], 10);
    const server = new OPCUAServer({
        port,
        host: "127.0.0.1",
        hostname: "127.0.0.1",
        securityModes: [MessageSecurityMode.None],
        securityPolicies: [SecurityPolicy.None],
        allowAnonymous: true,
        buildInfo: { productName: "conduit interop server" },
    });
    await server.initialize();
    const addressSpace = server.engine.addressSpace;
    // ns=1 is the server's own namespace; the line is ns=2, as in the
    // reference policy.
    const ns = addressSpace.registerNamespace("urn:conduit:test:line1");
    if (ns.index !== 2) {
        throw new Error("line namespace has index " + ns.index);
    }
    const line = ns.addObject({ nodeId: "s=Line1", browseName: "Line1", organizedBy: addressSpace.rootFolder.objects });

    let setpoint = 500.0;
    let mode = "auto";
    let counter = 0;
    const log = (s) => process.stdout.write(s + "\n");
    // Long strings are logged by length.
    const show = (v) => (typeof v === "string" && v.length > 100 ? "<" + v.length + " chars>" : JSON.stringify(v));

    ns.addVariable({
        componentOf: line, nodeId: "s=Line1.Setpoint", browseName: "Setpoint", dataType: "Double",
        minimumSamplingInterval: 50,
        value: {
            get: () => new Variant({ dataType: DataType.Double, value: setpoint }),
            set: (v) => { log("WRITE ns=2;s=Line1.Setpoint " + show(v.value)); setpoint = v.value; return StatusCodes.Good; },
        },
    });
    ns.addVariable({
        componentOf: line, nodeId: "s=Line1.Mode", browseName: "Mode", dataType: "String",
        minimumSamplingInterval: 50,
        value: {
            get: () => new Variant({ dataType: DataType.String, value: mode }),
            set: (v) => { log("WRITE ns=2;s=Line1.Mode " + show(v.value)); mode = v.value; return StatusCodes.Good; },
        },
    });
    const counterVar = ns.addVariable({
        componentOf: line, nodeId: "s=Line1.Counter", browseName: "Counter", dataType: "UInt32",
        minimumSamplingInterval: 50,
        value: { get: () => new Variant({ dataType: DataType.UInt32, value: counter }) },
    });
    const timer = setInterval(() => {
        counter++;
        counterVar.touchValue();
    }, 50);

    const reset = ns.addMethod(line, { nodeId: "s=Line1.ResetCounters", browseName: "ResetCounters" });
    reset.bindMethod(async (_inputArguments, _context) => {
        log("CALL ns=2;s=Line1 ns=2;s=Line1.ResetCounters");
        counter = 0;
        return { statusCode: StatusCodes.Good, outputArguments: [] };
    });
    const shutdown = ns.addMethod(line, { nodeId: "s=Line1.Shutdown", browseName: "Shutdown" });
    shutdown.bindMethod(async (_inputArguments, _context) => {
        log("CALL ns=2;s=Line1 ns=2;s=Line1.Shutdown");
        return { statusCode: StatusCodes.Good, outputArguments: [] };
    });

    await server.start();
    log("READY " + server.getEndpointUrl());
    const stop = async () => {
        clearInterval(timer);
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => {
    process.stderr.write("server failed: " + (err && err.stack || err) + "\n");
    process.exit(1);
});
