#!/usr/bin/python3
"""A pymodbus 3.0 server (Debian's python3-pymodbus): the independent device
for the proxy's interop test of the function codes simonvetter/modbus does not
speak. Tables are filled with a recognisable pattern; device identification
is set so FC 17 and FC 43/14 have something to say.

Usage: /usr/bin/python3 pymodbus_server.py HOST PORT
Prints "ready" on stdout once it listens.
"""
import asyncio
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.device import ModbusDeviceIdentification
from pymodbus.server import StartAsyncTcpServer


def context():
    # pymodbus addresses blocks from 1 (zero_mode=False): the block at 0
    # serves protocol address 0 from its second element.
    store = ModbusSlaveContext(
        di=ModbusSequentialDataBlock(0, [i % 2 for i in range(1000)]),
        co=ModbusSequentialDataBlock(0, [0] * 1000),
        hr=ModbusSequentialDataBlock(0, [(i * 7) & 0xFFFF for i in range(1000)]),
        ir=ModbusSequentialDataBlock(0, [1000 + i for i in range(1000)]),
    )
    return ModbusServerContext(slaves=store, single=True)


def identity():
    ident = ModbusDeviceIdentification()
    ident.VendorName = "Conduit test"
    ident.ProductCode = "PLC-SIM"
    ident.VendorUrl = "https://example.invalid/plc"
    ident.ProductName = "pymodbus device"
    ident.ModelName = "interop"
    ident.MajorMinorRevision = "3.0"
    return ident


async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, lambda: print("ready", flush=True))
    await StartAsyncTcpServer(context=context(), identity=identity(), address=(host, port))


if __name__ == "__main__":
    asyncio.run(main())
