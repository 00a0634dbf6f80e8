#!/usr/bin/env python3
"""An independent Sparkplug B host application for the tests: pysparkplug (pinned in
scripts/test.sh) decodes every message fieldgate publishes; paho-mqtt carries them.

Usage: spb_host.py HOST PORT GROUP_ID [PRIMARY_HOST_ID]

Prints one JSON object per line on stdout:
  {"type": "ready"}                          subscribed to spBv1.0/GROUP/# (and STATE)
  {"type": "NBIRTH"|"DBIRTH"|"DDATA"|"DDEATH"|"NDEATH", "topic", "edge", "device",
   "seq", "timestamp", "bdSeq", "metrics": [{"name", "alias", "datatype", "value",
   "timestamp", "historical", "null", "properties"}]}
  {"type": "error", "topic", "error"}        a message pysparkplug could not decode
  {"type": "sent", "what"}                   a command from stdin was published

Commands on stdin, one per line:
  state online|offline                       retained STATE of PRIMARY_HOST_ID, QoS 1
  rebirth EDGE                               NCMD Node Control/Rebirth = true
  dcmd EDGE DEVICE METRIC DATATYPE VALUE     DCMD with one metric (DATATYPE: Boolean, UInt16, ...)
  raw TOPIC HEX                              publish raw bytes
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pysparkplug as spb
from pysparkplug._protobuf import sparkplug_b_pb2 as pb

host, port, group = sys.argv[1], int(sys.argv[2]), sys.argv[3]
primary = sys.argv[4] if len(sys.argv) > 4 else None
lock = threading.Lock()
births = {}


def emit(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def now_ms():
    return int(time.time() * 1000)


def properties(raw_metric):
    if not raw_metric.HasField("properties"):
        return None
    out = {}
    for k, v in zip(raw_metric.properties.keys, raw_metric.properties.values):
        which = v.WhichOneof("value")
        out[k] = getattr(v, which) if which else None
    return out


def on_message(client, userdata, msg):
    try:
        topic = spb.Topic.from_str(msg.topic)
        kind = topic.message_type
        if kind == spb.MessageType.STATE:
            return
        if kind in (spb.MessageType.NCMD, spb.MessageType.DCMD):
            return
        key = (topic.edge_node_id, topic.device_id)
        out = {
            "type": str(kind),
            "topic": msg.topic,
            "edge": topic.edge_node_id,
            "device": topic.device_id,
            "qos": msg.qos,
            "retain": bool(msg.retain),
        }
        if kind == spb.MessageType.NDEATH:
            p = spb.NDeath.decode(msg.payload)
            out["bdSeq"] = p.bd_seq_metric.value
            out["timestamp"] = p.timestamp
            emit(out)
            return
        if kind == spb.MessageType.DDEATH:
            p = spb.DDeath.decode(msg.payload)
            out["seq"] = p.seq
            out["timestamp"] = p.timestamp
            emit(out)
            return
        cls = kind.payload
        birth = None
        if kind == spb.MessageType.DDATA or kind == spb.MessageType.NDATA:
            birth = births.get(key)
            if birth is None:
                raise ValueError("DATA before its BIRTH")
        p = cls.decode(msg.payload, birth=birth)
        if kind in (spb.MessageType.NBIRTH, spb.MessageType.DBIRTH):
            births[key] = p
        raw = pb.Payload.FromString(msg.payload)
        out["seq"] = p.seq
        out["timestamp"] = p.timestamp
        out["metrics"] = [
            {
                "name": m.name,
                "alias": m.alias,
                "datatype": m.datatype.name,
                "value": m.value,
                "timestamp": m.timestamp,
                "historical": m.is_historical,
                "null": m.is_null,
                "properties": properties(r),
            }
            for m, r in zip(p.metrics, raw.metrics)
        ]
        for m in p.metrics:
            if m.name == "bdSeq":
                out["bdSeq"] = m.value
        emit(out)
    except Exception as e:  # noqa: BLE001 - every failure is reported to the test
        emit({"type": "error", "topic": msg.topic, "error": repr(e)})


def on_connect(client, userdata, flags, rc):
    client.subscribe(f"spBv1.0/{group}/#", qos=1)


def on_subscribe(client, userdata, mid, granted):
    emit({"type": "ready"})


client = mqtt.Client(client_id=f"spb-host-{now_ms()}", clean_session=True)
client.on_message = on_message
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.connect(host, port, keepalive=30)
client.loop_start()


def metric(name, dtype, value):
    dt = spb.DataType[dtype.upper()]
    if dt == spb.DataType.BOOLEAN:
        value = value.lower() == "true"
    elif dt in (spb.DataType.FLOAT, spb.DataType.DOUBLE):
        value = float(value)
    elif dt != spb.DataType.STRING:
        value = int(value)
    return spb.Metric(timestamp=now_ms(), name=name, datatype=dt, value=value)


for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    if parts[0] == "state":
        body = json.dumps({"online": parts[1] == "online", "timestamp": now_ms()})
        client.publish(f"spBv1.0/STATE/{primary}", body, qos=1, retain=True).wait_for_publish()
    elif parts[0] == "rebirth":
        p = spb.NCmd(timestamp=now_ms(), metrics=(metric("Node Control/Rebirth", "Boolean", "true"),))
        client.publish(f"spBv1.0/{group}/NCMD/{parts[1]}", p.encode(include_dtypes=True), qos=0).wait_for_publish()
    elif parts[0] == "dcmd":
        edge, device, name, dtype, value = parts[1:6]
        p = spb.DCmd(timestamp=now_ms(), metrics=(metric(name, dtype, value),))
        client.publish(f"spBv1.0/{group}/DCMD/{edge}/{device}", p.encode(include_dtypes=True), qos=0).wait_for_publish()
    elif parts[0] == "raw":
        client.publish(parts[1], bytes.fromhex(parts[2]), qos=0).wait_for_publish()
    emit({"type": "sent", "what": line.strip()})
