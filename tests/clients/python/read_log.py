#!/usr/bin/env python3
"""A consumer of the flowline event log written with nothing of flowline's code.

Reads a topic from the beginning to its end with confluent-kafka, checks each record's
CloudEvents headers (Kafka protocol binding, binary mode), finds the writer schema from the
content-type header, strips the Avro single-object header (C3 01 + the 8-byte CRC-64-AVRO
fingerprint of the writer schema) and decodes the value with fastavro using that schema.
Prints one JSON line per record; exits non-zero at the first record it cannot read.

The fingerprint is enforced: it must be the CRC-64-AVRO that fastavro computes from the
named .avsc's Parsing Canonical Form, as the Avro specification defines it.

Usage: read_log.py --brokers HOST:PORT --topic TOPIC [--schemas DIR]
"""

import argparse
import io
import json
import os
import re
import sys
import uuid
from datetime import datetime

import fastavro
from confluent_kafka import Consumer, TopicPartition

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CE_TYPE = re.compile(r"^ai\.flowline\.workflow\.(\w+)\.v(\d+)$")
SCHEMA_PARAM = re.compile(r'schema="([^"]+)"')


def fail(message):
    print(f"read_log.py: {message}", file=sys.stderr)
    sys.exit(1)


def load_schema(root, relative, cache):
    if relative not in cache:
        with open(os.path.join(root, relative)) as f:
            schema = fastavro.parse_schema(json.load(f))
        canonical = fastavro.schema.to_parsing_canonical_form(schema)
        fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
        cache[relative] = (schema, fingerprint)
    return cache[relative]


def check_headers(headers, key):
    expected = {"ce_specversion": "1.0"}
    for name, value in expected.items():
        if headers.get(name) != value:
            fail(f"{name} is {headers.get(name)!r}, expected {value!r}")
    for name in ("ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "content-type"):
        if not headers.get(name):
            fail(f"header {name} is missing")
    uuid.UUID(headers["ce_id"])
    if headers["ce_subject"] != key:
        fail(f"ce_subject {headers['ce_subject']} is not the record key {key}")
    datetime.fromisoformat(headers["ce_time"].replace("Z", "+00:00"))
    match = CE_TYPE.match(headers["ce_type"])
    if not match:
        fail(f"ce_type {headers['ce_type']!r} does not name a type and version")
    content_type = headers["content-type"]
    if "encoding=single-object" not in content_type:
        fail(f"content-type {content_type!r} is not Avro single-object encoding")
    schema = SCHEMA_PARAM.search(content_type)
    if not schema:
        fail(f"content-type {content_type!r} names no schema")
    expected_file = f"schemas/avro/{match.group(1)}.v{match.group(2)}.avsc"
    if schema.group(1) != expected_file:
        fail(f"content-type names {schema.group(1)}, ce_type names {expected_file}")
    return schema.group(1)


def decode(payload, schema):
    if payload[:2] != SINGLE_OBJECT_MAGIC:
        fail("value is not Avro single-object encoded")
    # The writer schema named by the headers: no resolution to another version is needed.
    return payload[2:10], fastavro.schemaless_reader(io.BytesIO(payload[10:]), schema, None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument(
        "--schemas",
        default=os.path.join(os.path.dirname(__file__), "..", "..", ".."),
        help="directory the content-type's schema path is relative to (the repository root)",
    )
    args = parser.parse_args()
    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": f"read-log-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_uncommitted",
            "fetch.wait.max.ms": 10,
        }
    )
    metadata = consumer.list_topics(args.topic, timeout=10)
    partitions = sorted(metadata.topics[args.topic].partitions)
    ends = {}
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, partition), timeout=10)
        if high > low:
            ends[partition] = high
    consumer.assign([TopicPartition(args.topic, p, 0) for p in ends])
    schemas = {}
    idle = 0
    while ends:
        message = consumer.poll(1.0)
        if message is None:
            idle += 1
            if idle > 30:
                fail(f"no record for 30s; partitions left: {sorted(ends)}")
            continue
        idle = 0
        if message.error():
            fail(str(message.error()))
        partition, offset = message.partition(), message.offset()
        if partition not in ends or offset >= ends[partition]:
            continue
        if offset + 1 >= ends[partition]:
            del ends[partition]
        headers = {k: v.decode() for k, v in (message.headers() or [])}
        key = message.key().decode()
        schema_file = check_headers(headers, key)
        schema, fingerprint = load_schema(args.schemas, schema_file, schemas)
        written_fingerprint, value = decode(message.value(), schema)
        if written_fingerprint != fingerprint:
            fail(
                f"{partition}:{offset}: fingerprint {written_fingerprint.hex()} is not the "
                f"specification's {fingerprint.hex()} of {schema_file}"
            )
        print(
            json.dumps(
                {
                    "partition": partition,
                    "offset": offset,
                    "key": key,
                    "headers": headers,
                    "schema": schema_file,
                    "fingerprint": written_fingerprint.hex(),
                    "spec_fingerprint": fingerprint.hex(),
                    "value": value,
                },
                default=str,
            ),
            flush=True,
        )
    consumer.close()


if __name__ == "__main__":
    main()
