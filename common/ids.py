"""Prefixed, URL-safe, sortable-enough ids: file-…, ftjob-…, ftevent-…, ftckpt-…"""

import secrets

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_UNBIASED = 256 - 256 % len(_ALPHABET)  # bytes below this map evenly onto the alphabet (248 = 4 x 62)


def new_id(prefix: str, length: int = 24) -> str:
    """`length` characters drawn uniformly from the alphabet, out of one read of the OS's random source per id
    (`secrets.choice` per character reads it 24 times: a tenth of `POST /jobs`' CPU, which makes three ids)."""
    chars: list[str] = []
    while len(chars) < length:
        chars += [_ALPHABET[b % len(_ALPHABET)] for b in secrets.token_bytes(length + 8) if b < _UNBIASED]
    return f"{prefix}-" + "".join(chars[:length])
