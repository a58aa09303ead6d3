#!/usr/bin/env python3
"""Example producer: publishes orderflow commands straight to RabbitMQ (contract version 1).

The contract (README.md in this directory; command.schema.json is its JSON Schema):

- exchange `<namespace>.commands`, routing key = the order's partition in decimal, computed by
  partition_of(order_id, N) from partition.py (FNV-1a 32 over the order id's 16 bytes, mod N);
  N must equal orderflow's ORDERFLOW_PARTITIONS;
- body: UTF-8 JSON {"version": 1, "command_id", "client_id", "order_id", ["expected_version"],
  "command": {"type": ..., ...}}; unknown fields are refused;
- properties: content_type application/json, delivery_mode 2 (persistent), message_id = command_id,
  user_id = the broker user this producer connects as (RabbitMQ checks it), which orderflow's
  operator granted the client (`orderflow-api producer grant --broker-user U --client-id C`);
- command_id is the idempotency key: publishing the same command again is harmless, so retry a
  publish whose confirm you did not get with the *same* command_id;
- client_id must own the order (the client that created it), and be granted to the broker user;
- a message orderflow cannot read is dead-lettered to `<namespace>.dead-letter` with the header
  `x-orderflow-reason`; a nack means the partition queue is full (retry later, same command_id).

This script creates an order (or uses --order-id), adds an item and reserves it, with publisher
confirms and mandatory publishing, and prints one JSON line per command. Requires pika 1.3.x.

    python3 producer.py --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f --namespace orderflow \\
        --partitions 16 --client-id 6f1c2a8e-4b7d-4e0a-9c3f-2d5e8a1b7c40 [--order-id UUID] [--count-duplicates]
"""

import argparse
import json
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from partition import partition_of  # noqa: E402

import pika  # noqa: E402
from pika.exceptions import AMQPError, NackError, UnroutableError  # noqa: E402


def command_message(client_id, order_id, command):
    return {
        "version": 1,
        "command_id": str(uuid.uuid4()),
        "client_id": str(client_id),
        "order_id": str(order_id),
        "command": command,
    }


def publish(channel, exchange, routing_key, message, broker_user):
    """Publishes one message; raises NackError/UnroutableError unless the broker confirms it.

    user_id names the broker user this connection logged in as: RabbitMQ refuses any other value,
    and orderflow records the command only if that user is granted the client
    (`orderflow-api producer grant`)."""
    channel.basic_publish(
        exchange=exchange,
        routing_key=routing_key,
        body=json.dumps(message).encode("utf-8"),
        properties=pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id=message["command_id"],
            user_id=broker_user,
        ),
        mandatory=True,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description="Publish example commands to orderflow's command exchange.")
    parser.add_argument("--amqp-url", required=True, help="e.g. amqp://guest:guest@127.0.0.1:5672/%%2f")
    parser.add_argument("--namespace", required=True, help="orderflow's namespace; the exchange is <namespace>.commands")
    parser.add_argument("--partitions", required=True, type=int, help="orderflow's ORDERFLOW_PARTITIONS")
    parser.add_argument("--client-id", required=True, type=uuid.UUID, help="the client that owns the order")
    parser.add_argument("--order-id", type=uuid.UUID, help="the order (default: a new uuid4)")
    parser.add_argument("--count-duplicates", action="store_true",
                        help="publish the add_item message twice (same command_id) to show idempotency")
    args = parser.parse_args(argv)
    if not 1 <= args.partitions <= 65535:
        parser.error("--partitions must be between 1 and 65535")

    order_id = args.order_id or uuid.uuid4()
    exchange = f"{args.namespace}.commands"
    routing_key = str(partition_of(order_id, args.partitions))
    commands = [
        {"type": "create", "customer_id": "py-customer", "currency": "EUR",
         "items": [{"sku": "PY-SKU-1", "quantity": 2, "unit_price_cents": 500}]},
        {"type": "add_item", "sku": "PY-SKU-2", "quantity": 1, "unit_price_cents": 250},
        {"type": "reserve"},
    ]

    try:
        parameters = pika.URLParameters(args.amqp_url)
        broker_user = parameters.credentials.username
        connection = pika.BlockingConnection(parameters)
    except (AMQPError, OSError, ValueError) as e:
        print(f"producer: cannot connect to {args.amqp_url}: {e!r}", file=sys.stderr)
        return 2
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for command in commands:
            message = command_message(args.client_id, order_id, command)
            publish(channel, exchange, routing_key, message, broker_user)
            if args.count_duplicates and command["type"] == "add_item":
                publish(channel, exchange, routing_key, message, broker_user)  # same command_id: a no-op for orderflow
            print(json.dumps({"command_id": message["command_id"], "order_id": str(order_id), "type": command["type"]}),
                  flush=True)
    except UnroutableError:
        print(f"producer: message returned unroutable: no queue is bound to exchange {exchange!r} "
              f"with routing key {routing_key!r} (is orderflow running with {args.partitions} partitions?)",
              file=sys.stderr)
        return 3
    except NackError:
        print(f"producer: the broker refused (nacked) a message to exchange {exchange!r} with routing key "
              f"{routing_key!r}: the partition queue is full; retry later with the same command_id", file=sys.stderr)
        return 3
    except (AMQPError, OSError) as e:
        print(f"producer: publishing to exchange {exchange!r} failed: {e!r}", file=sys.stderr)
        return 4
    finally:
        if connection.is_open:
            connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
