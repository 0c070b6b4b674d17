"""``orq events tail``: the event log of every partition, decoded to JSON lines, following live."""

from __future__ import annotations

import argparse
import sys
from typing import Any, cast

import msgspec

from shared.infra.settings import Settings
from shared.log import keys
from shared.log.events import decode, to_json
from shared.log.redis import BLOCK_MS, Entries, client_for, text
from shared.log.stream_reads import StreamReads


def _wanted(event: Any, args: argparse.Namespace) -> bool:
    if args.tenant and event.tenant_id != args.tenant:
        return False
    return not args.types or any(event.__struct_config__.tag.startswith(t) for t in args.types)


def _emit(stream_p: int, entry_id: str, fields: dict[bytes, bytes], args: argparse.Namespace) -> bool:
    try:
        event = decode(fields.get(b"d", b""), entry_id)
    except (msgspec.DecodeError, msgspec.ValidationError):
        print(f'{{"id": "{entry_id}", "partition": {stream_p}, "type": "{text(fields.get(b"t"))}", '
              '"undecodable": true}')
        return True
    if not _wanted(event, args):
        return False
    sys.stdout.write(to_json(event).decode()[:-1] + f', "partition": {stream_p}}}\n')
    sys.stdout.flush()
    return True


async def tail(settings: Settings, args: argparse.Namespace) -> int:
    partitions = args.partition or list(range(settings.partitions))
    redis = client_for(settings)
    reads = StreamReads(redis)
    shown = 0
    try:
        positions: dict[str, str] = {}
        for p in partitions:
            stream = keys.log(p)
            since = args.since
            if args.last:
                recent = cast(Entries, await redis.xrevrange(stream, count=args.last))
                for raw_id, fields in reversed(recent):
                    shown += _emit(p, text(raw_id), fields, args)
                since = text(recent[0][0]) if recent else "0-0"
            elif since == "$":
                last = cast(Entries, await redis.xrevrange(stream, count=1))
                since = text(last[0][0]) if last else "0-0"
            positions[stream] = since
        partition_of = {keys.log(p): p for p in partitions}
        while not (args.max and shown >= args.max):
            reply = await reads.read(positions, count=500, block_ms=None if args.no_follow else BLOCK_MS)
            if not reply:
                if args.no_follow:
                    break
                continue
            for name, entries in reply:
                for raw_id, fields in entries:
                    positions[name] = text(raw_id)
                    shown += _emit(partition_of[name], text(raw_id), fields, args)
                    if args.max and shown >= args.max:
                        return 0
    except KeyboardInterrupt:  # pragma: no cover - interactive use
        pass
    finally:
        await reads.close()
        await redis.aclose()
    return 0
