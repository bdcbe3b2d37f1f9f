// A node-opcua client that exercises a server through Conduit, for the
// interop test in proxy/opcua_node_test.go. It prints one JSON object with
// what each step returned; the Go test asserts on it.
//
// Usage: node client.js <endpoint url>
"use strict";
const {
    OPCUAClient, AttributeIds, DataType, MessageSecurityMode, SecurityPolicy, TimestampsToReturn,
    ClientSubscription, ClientMonitoredItem,
} = require("node-opcua");

const SETPOINT = "ns=2;s=Line1.Setpoint";
const MODE = "ns=2;s=Line1.Mode";
const COUNTER = "ns=2;s=Line1.Counter";

function describe(err) {
    return (err && err.message) || String(err);
}

async function attempt(fn) {
    try {
        return { ok: true, result: await fn() };
    } catch (err) {
        return { ok: false, error: describe(err) };
    }
}

async function main() {
    const url = process.argv[2];
    const out = {};
    const client = OPCUAClient.create({
        applicationName: "conduit-interop-client",
        endpointMustExist: true, // the endpoints the proxy returns must name the proxy
        securityMode: MessageSecurityMode.None,
        securityPolicy: SecurityPolicy.None,
        connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
        requestedSessionTimeout: 60000,
    });
    await client.connect(url);
    const endpoints = await client.getEndpoints();
    out.endpoints = endpoints.map((e) => e.endpointUrl);
    const session = await client.createSession();

    const read = async (node) => (await session.read({ nodeId: node, attributeId: AttributeIds.Value })).value.value;
    const write = async (node, dataType, value) =>
        (await session.write({ nodeId: node, attributeId: AttributeIds.Value, value: { value: { dataType, value } } })).name;
    const call = async (method) => (await session.call({ objectId: "ns=2;s=Line1", methodId: method, inputArguments: [] })).statusCode.name;

    // A subscription runs through everything below: notifications keep
    // coming across the denials.
    const sub = ClientSubscription.create(session, {
        requestedPublishingInterval: 100, requestedLifetimeCount: 100, requestedMaxKeepAliveCount: 10,
        maxNotificationsPerPublish: 100, publishingEnabled: true, priority: 1,
    });
    let notifications = 0;
    const item = ClientMonitoredItem.create(sub, { nodeId: COUNTER, attributeId: AttributeIds.Value },
        { samplingInterval: 50, discardOldest: true, queueSize: 10 }, TimestampsToReturn.Both);
    item.on("changed", () => { notifications++; });
    const waitNotifications = async (n) => {
        const start = notifications;
        const deadline = Date.now() + 10000;
        while (notifications - start < n && Date.now() < deadline) {
            await new Promise((r) => setTimeout(r, 20));
        }
        return notifications - start;
    };
    out.notificationsBefore = await waitNotifications(3);

    out.read = await attempt(() => read(SETPOINT));
    out.writeAllowed = await attempt(() => write(SETPOINT, DataType.Double, 750));
    out.writeMode = await attempt(() => write(MODE, DataType.String, "manual"));
    // 20 000 characters: several chunks each way when the proxy limits
    // chunks to 8 KiB.
    const big = "y".repeat(20000);
    out.writeLarge = await attempt(() => write(MODE, DataType.String, big));
    out.readLarge = await attempt(async () => (await read(MODE)).length);
    out.writeDenied = await attempt(() => write(SETPOINT, DataType.Double, 1500));
    out.readAfterWriteDeny = await attempt(() => read(SETPOINT));
    out.callAllowed = await attempt(() => call("ns=2;s=Line1.ResetCounters"));
    out.callDenied = await attempt(() => call("ns=2;s=Line1.Shutdown"));
    out.readAfterCallDeny = await attempt(() => read(SETPOINT));
    out.writeAfterDenies = await attempt(() => write(SETPOINT, DataType.Double, 100));
    out.notificationsAfter = await waitNotifications(3);

    await sub.terminate();
    await session.close();
    await client.disconnect();
    process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
    process.stderr.write("client failed: " + (err && err.stack || err) + "\n");
    process.exit(1);
});
