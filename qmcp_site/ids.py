"""Primary keys that arrive in time order: UUID version 7 (RFC 9562).

The audit table takes a row per call. With random (version 4) keys every INSERT lands on a
random page of the primary key's index, so once the table outgrows the page cache each
call pays a page read; a version 7 key starts with the millisecond it was made, so new
rows go to the index's right edge, as with an integer key, and the table can grow to
millions of rows at the speed of an empty one. The other 74 bits are random (from the
operating system's generator, read 4 KiB at a time per thread instead of one system call
per key), so keys stay unguessable; they tell when a row was made, which its
``created_at`` says anyway.
"""

import os
import threading
import time
import uuid

_CHUNK = 4096
_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_RAND_B = (1 << 62) - 1


class _Randomness(threading.local):
    buffer = b""
    offset = 0


_RANDOMNESS = _Randomness()


def _random_bits_80() -> int:
    state = _RANDOMNESS
    offset = state.offset
    if offset + 10 > len(state.buffer):
        state.buffer, offset = os.urandom(_CHUNK), 0
    state.offset = offset + 10
    return int.from_bytes(state.buffer[offset : offset + 10], "big")


def uuid7() -> uuid.UUID:
    """A new UUID version 7: 48 bits of Unix time in milliseconds, the version and variant,
    74 random bits."""
    rand = _random_bits_80()
    value = (
        (time.time_ns() // 1_000_000) << 80
        | _VERSION_AND_VARIANT
        | (rand >> 68) << 64
        | rand & _RAND_B
    )
    return uuid.UUID(int=value)
