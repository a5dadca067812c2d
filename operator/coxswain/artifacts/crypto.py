"""AES-256-GCM for model files, keyed from a file or an environment variable."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
KEY_BYTES = 32


class InvalidKeyError(ValueError):
    """The key is missing or malformed."""


class DecryptionError(ValueError):
    """Wrong key, or the file was changed."""


def parse_key(material: bytes | str) -> bytes:
    """Accept 32 raw bytes, or 64 hex chars, or base64 of 32 bytes (whitespace ignored)."""
    raw = material.encode() if isinstance(material, str) else material
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    for decode in (binascii.unhexlify, base64.b64decode):
        try:
            key = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise InvalidKeyError(
        f"an encryption key must be 32 bytes (raw, 64 hex characters or base64); got {len(text)} characters"
    )


def load_key(
    key_file: str | os.PathLike[str] | None = None, env_var: str = "COXSWAIN_ENCRYPTION_KEY"
) -> bytes | None:
    """The key from `key_file` if given, else from `env_var`, else None (no encryption)."""
    if key_file:
        return parse_key(Path(key_file).read_bytes())
    value = os.environ.get(env_var)
    return parse_key(value) if value else None


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def encrypt(key: bytes, plaintext: bytes, associated: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated.encode())


def decrypt(key: bytes, stored: bytes, associated: str) -> bytes:
    if len(stored) < NONCE_BYTES + 16:
        raise DecryptionError(f"{associated}: too short to be an encrypted file")
    try:
        return AESGCM(key).decrypt(stored[:NONCE_BYTES], stored[NONCE_BYTES:], associated.encode())
    except InvalidTag as exc:
        raise DecryptionError(f"{associated}: decryption failed (wrong key or modified file)") from exc
