"""An independent Modbus RTU slave (pymodbus) for fieldgate's interoperability test.

Usage: python pymodbus_rtu_server.py PORT UNIT

Unit UNIT serves, at zero-based protocol addresses:
  input registers 0     = 321 (u16)
  input registers 1-2   = 1.5 as f32, word order CDAB (low word first)
  input registers 3-6   = 0x0102030405060708 as u64, ABCD
  holding registers 10-11 = an f32 setpoint, CDAB, initially 0.0 (writable, FC 16)
  coil 0                = writable
It prints "pymodbus serving" once the port is open.
"""

import struct
import sys

from pymodbus import FramerType
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartSerialServer


def words_f32_cdab(value):
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [lo, hi]


def main():
    port, unit = sys.argv[1], int(sys.argv[2])
    ir = [321] + words_f32_cdab(1.5) + [0x0102, 0x0304, 0x0506, 0x0708] + [0] * 20
    hr = [0] * 40
    # pymodbus numbers its blocks from 1: block address 1 is protocol address 0.
    device = ModbusDeviceContext(
        di=ModbusSequentialDataBlock(1, [0] * 20),
        co=ModbusSequentialDataBlock(1, [0] * 20),
        ir=ModbusSequentialDataBlock(1, ir),
        hr=ModbusSequentialDataBlock(1, hr),
    )
    context = ModbusServerContext(devices={unit: device}, single=False)
    print("pymodbus serving", flush=True)
    StartSerialServer(context=context, framer=FramerType.RTU, port=port, baudrate=19200, parity="N")


if __name__ == "__main__":
    main()
