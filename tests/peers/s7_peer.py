#!/usr/bin/env python3
"""An independent S7 peer for tests/s7.rs: python-snap7 (pinned in scripts/test.sh; 3.x is a
pure-Python implementation of S7comm), as a server holding DB1, and as a client that reads
what fieldgate wrote.

Usage: s7_peer.py PORT

DB1 (32 bytes):
  DB1,REAL0        21.5
  DB1,INT4         -1234
  DB1.DBX6.0       True      (byte 6 = 0b101: bit 2 set too, bit 1 clear)
  DB1,STRING8.10   "PUMP-7"  (max 10 characters: bytes 8-19)
  DB1,INT20        100       (the INT fieldgate writes)

DB2 (300 bytes):
  DB2,STRING0.254  "Hällo " and 240 times "x": a TIA default STRING[254] (256 bytes, more than
                   one reply at PDU 240), its characters Latin-1 (0xE4 for "ä")
  DB2,INT256       4321

Prints one line per event on stdout:
  listening PORT
  stopped / started
  int DB BYTE VALUE              the answer to `read_int`
  error TEXT

Commands on stdin, one per line:
  stop | start                   stop or start the server (the same port)
  read_int DB BYTE [PORT]        read an INT with a python-snap7 client (rack 0, slot 1) from
                                 this server, or from another S7 server on PORT
  set_int DB BYTE VALUE          set an INT in the server's memory directly
"""

import struct
import sys
import time

import snap7
from snap7.type import SrvArea

port = int(sys.argv[1])


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


db1 = bytearray(32)
struct.pack_into(">f", db1, 0, 21.5)
struct.pack_into(">h", db1, 4, -1234)
db1[6] = 0b101
name = b"PUMP-7"
db1[8] = 10
db1[9] = len(name)
db1[10 : 10 + len(name)] = name
struct.pack_into(">h", db1, 20, 100)

db2 = bytearray(300)
long_text = ("Hällo " + "x" * 240).encode("latin-1")
db2[0] = 254
db2[1] = len(long_text)
db2[2 : 2 + len(long_text)] = long_text
struct.pack_into(">h", db2, 256, 4321)

server = snap7.server.Server(log=False)
server.host = "127.0.0.1"
server.register_area(SrvArea.DB, 1, db1)
server.register_area(SrvArea.DB, 2, db2)


def start():
    deadline = time.time() + 10
    while True:
        try:
            server.start(tcp_port=port)
            return
        except Exception as e:  # the port may still be in TIME_WAIT for a moment
            if time.time() > deadline:
                raise
            time.sleep(0.1)


start()
say(f"listening {port}")

for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    try:
        if words[0] == "stop":
            server.stop()
            say("stopped")
        elif words[0] == "start":
            start()
            say("started")
        elif words[0] == "read_int":
            db, byte = int(words[1]), int(words[2])
            target = int(words[3]) if len(words) > 3 else port
            client = snap7.client.Client()
            client.connect("127.0.0.1", 0, 1, target)
            data = client.db_read(db, byte, 2)
            client.disconnect()
            say(f"int {db} {byte} {struct.unpack('>h', bytes(data))[0]}")
        elif words[0] == "set_int":
            db, byte, value = int(words[1]), int(words[2]), int(words[3])
            struct.pack_into(">h", db1, byte, value)
            say(f"set {db} {byte} {value}")
        else:
            say(f"error unknown command {words[0]}")
    except Exception as e:
        say(f"error {type(e).__name__}: {e}")
