#!/usr/bin/python3
"""Interop peer for inspect/modbus: a pymodbus 3.0 client (Debian's
python3-pymodbus) sends the function codes simonvetter/modbus does not
speak — 7, 8, 11, 12, 17, 20, 21, 22, 23, 24, 43/14 — plus the common ones,
to the Go test server built from inspect/modbus, and prints what pymodbus
decoded as one JSON object on stdout. The Go test (interop_test.go) knows the
server's tables and checks every value.

Usage: /usr/bin/python3 pymodbus_client.py HOST PORT
Exit status 2 when the connection fails; every request that fails is
reported in the JSON ("error") rather than aborting, so that the Go side can
say which one.
"""
import json
import sys

from pymodbus.client import ModbusTcpClient
from pymodbus.diag_message import (
    ClearCountersRequest,
    ClearOverrunCountRequest,
    ReturnBusMessageCountRequest,
    ReturnDiagnosticRegisterRequest,
    ReturnQueryDataRequest,
    ReturnSlaveMessageCountRequest,
    RestartCommunicationsOptionRequest,
)
from pymodbus.file_message import (
    FileRecord,
    ReadFifoQueueRequest,
    ReadFileRecordRequest,
    WriteFileRecordRequest,
)
from pymodbus.mei_message import ReadDeviceInformationRequest
from pymodbus.other_message import (
    GetCommEventCounterRequest,
    GetCommEventLogRequest,
    ReadExceptionStatusRequest,
    ReportSlaveIdRequest,
)
from pymodbus.register_read_message import ReadWriteMultipleRegistersRequest
from pymodbus.register_write_message import MaskWriteRegisterRequest

UNIT = 1


def run(client, out, name, request, decode):
    """Execute one request and store decode(response) or the error."""
    request.unit_id = UNIT
    try:
        response = client.execute(request)
    except Exception as exc:  # pylint: disable=broad-except
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return
    if response is None or response.isError():
        out[name] = {"error": str(response)}
        return
    try:
        out[name] = decode(response)
    except Exception as exc:  # pylint: disable=broad-except
        out[name] = {"error": f"decode: {type(exc).__name__}: {exc}"}


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    client = ModbusTcpClient(host, port=port, timeout=3, retries=0)
    if not client.connect():
        print(json.dumps({"error": "connect failed"}))
        return 2
    out = {}

    # The common codes, to cross-check pymodbus's encoder with ours.
    run(client, out, "fc3", _req("read_holding_registers", 100, 3), lambda r: r.registers)
    run(client, out, "fc16", _req("write_registers", 200, [11, 22, 33]), lambda r: [r.address, r.count])
    run(client, out, "fc15", _req("write_coils", 30, [True, False, True, True]), lambda r: [r.address, r.count])
    run(client, out, "fc1", _req("read_coils", 30, 4), lambda r: [int(b) for b in r.bits[:4]])

    run(client, out, "fc7", ReadExceptionStatusRequest(), lambda r: r.status)
    run(client, out, "fc8_00", ReturnQueryDataRequest(0xA537), lambda r: r.message)
    run(client, out, "fc8_01", RestartCommunicationsOptionRequest(True), lambda r: r.message)
    run(client, out, "fc8_02", ReturnDiagnosticRegisterRequest(), lambda r: r.message)
    run(client, out, "fc8_10", ClearCountersRequest(), lambda r: r.message)
    run(client, out, "fc8_11", ReturnBusMessageCountRequest(), lambda r: r.message)
    run(client, out, "fc8_14", ReturnSlaveMessageCountRequest(), lambda r: r.message)
    run(client, out, "fc8_20", ClearOverrunCountRequest(), lambda r: r.message)
    run(client, out, "fc11", GetCommEventCounterRequest(), lambda r: [r.status, r.count])
    run(client, out, "fc12", GetCommEventLogRequest(),
        lambda r: [r.status, r.event_count, r.message_count, r.events])
    run(client, out, "fc17", ReportSlaveIdRequest(), lambda r: [r.identifier.hex(), r.status])

    records = [FileRecord(file_number=4, record_number=1, record_length=2),
               FileRecord(file_number=3, record_number=9, record_length=2)]
    run(client, out, "fc20", ReadFileRecordRequest(records),
        lambda r: [rec.record_data.hex() for rec in r.records])
    write = [FileRecord(file_number=4, record_number=7, record_data=b"\x06\xaf\x04\xbe\x10\x0d")]
    run(client, out, "fc21", WriteFileRecordRequest(write),
        lambda r: [[rec.file_number, rec.record_number, rec.record_data.hex()] for rec in r.records])
    run(client, out, "fc20_after_fc21", ReadFileRecordRequest(
        [FileRecord(file_number=4, record_number=7, record_length=3)]),
        lambda r: [rec.record_data.hex() for rec in r.records])

    run(client, out, "fc22", MaskWriteRegisterRequest(40, 0x00F2, 0x0025),
        lambda r: [r.address, r.and_mask, r.or_mask])
    run(client, out, "fc22_readback", _req("read_holding_registers", 40, 1), lambda r: r.registers)
    run(client, out, "fc23", ReadWriteMultipleRegistersRequest(
        read_address=3, read_count=6, write_address=14, write_registers=[0xFF, 0xFF, 0xFF]),
        lambda r: r.registers)
    run(client, out, "fc24", ReadFifoQueueRequest(0x04DE), lambda r: r.values)

    for code in (1, 2, 3):
        run(client, out, f"fc43_{code}", ReadDeviceInformationRequest(read_code=code, object_id=0),
            lambda r: [r.read_code, r.conformity, r.more_follows, r.next_object_id,
                       {str(k): v.decode() for k, v in r.information.items()}])
    run(client, out, "fc43_4", ReadDeviceInformationRequest(read_code=4, object_id=4),
        lambda r: [r.read_code, {str(k): v.decode() for k, v in r.information.items()}])

    # Refusals: quantity 126 (exception 3), an address past 65535
    # (exception 2) and a user-defined function (exception 1).
    run(client, out, "fc3_126", _req("read_holding_registers", 0, 126), lambda r: r.registers)
    run(client, out, "fc3_overflow", _req("read_holding_registers", 65535, 2), lambda r: r.registers)

    client.close()
    print(json.dumps(out, sort_keys=True))
    return 0


def _req(kind, address, arg):
    """Build a request of the common kinds without executing it."""
    # pylint: disable=import-outside-toplevel
    from pymodbus.bit_read_message import ReadCoilsRequest
    from pymodbus.bit_write_message import WriteMultipleCoilsRequest
    from pymodbus.register_read_message import ReadHoldingRegistersRequest
    from pymodbus.register_write_message import WriteMultipleRegistersRequest

    return {
        "read_holding_registers": ReadHoldingRegistersRequest,
        "write_registers": WriteMultipleRegistersRequest,
        "write_coils": WriteMultipleCoilsRequest,
        "read_coils": ReadCoilsRequest,
    }[kind](address, arg)


if __name__ == "__main__":
    sys.exit(main())
