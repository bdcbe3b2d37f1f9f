#!/usr/bin/python3
"""A second, independent Modbus/TCP Security client: pymodbus 3.0's TLS
client (Debian's python3-pymodbus) with a client certificate. It reads
holding register 10 and writes holding register 12, and prints what it got
as one JSON object on stdout.

pymodbus's default TLS framer sends the PDU without the MBAP header; the
Modbus/TCP Security specification keeps the MBAP header inside TLS, and so
does every other implementation (simonvetter/modbus, Conduit). FRAMER
"socket" uses the MBAP framer over TLS; "tls" the default.

Usage: /usr/bin/python3 pymodbus_tls_client.py HOST PORT CERT KEY CA FRAMER
"""
import json
import socket
import ssl
import sys

from pymodbus.client import ModbusTlsClient
from pymodbus.framer.socket_framer import ModbusSocketFramer
from pymodbus.framer.tls_framer import ModbusTlsFramer



class MbapsClient(ModbusTlsClient):
    """pymodbus 3.0's TCP recv polls the socket with select(), which does
    not see bytes already decrypted into the SSL object's buffer: the rest
    of a response that arrived in one TLS record is never read. Read with a
    blocking timeout instead; framing and decoding stay pymodbus's."""

    def recv(self, size):
        if not self.socket:
            return b""
        self.socket.settimeout(self.params.timeout)
        if size is None:
            return self.socket.recv(4096)
        data = b""
        while len(data) < size:
            try:
                chunk = self.socket.recv(size - len(data))
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
        return data


host, port, cert, key, ca, framer = sys.argv[1:7]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.load_verify_locations(cafile=ca)
ctx.load_cert_chain(certfile=cert, keyfile=key)
client = MbapsClient(
    host,
    port=int(port),
    sslctx=ctx,
    server_hostname=host,
    framer=ModbusSocketFramer if framer == "socket" else ModbusTlsFramer,
    timeout=3,
    retries=0,
)
out = {"connected": bool(client.connect())}


def attempt(name, fn):
    try:
        rr = fn()
        if rr.isError():
            out[name] = {"error": str(rr)}
        else:
            out[name] = getattr(rr, "registers", None) or "ok"
    except Exception as e:  # pylint: disable=broad-except
        out[name] = {"error": repr(e)}


if out["connected"]:
    attempt("read", lambda: client.read_holding_registers(10, 1, slave=1))
    attempt("write", lambda: client.write_register(12, 300, slave=1))
client.close()
print(json.dumps(out))
