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
# The encryption formats a manifest's `encryption.format` names (see manifest.Encryption).
FORMAT_PATH_ONLY = 1
FORMAT_BOUND = 2
CURRENT_FORMAT = FORMAT_BOUND


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


def file_associated_data(model: str, version: str, path: str, fmt: int = CURRENT_FORMAT) -> str:
    """What a model file's ciphertext is bound to. NUL separates the parts: no name, version
    or path holds one, so no two (model, version, path) give the same bytes."""
    if fmt == FORMAT_PATH_ONLY:
        return path
    if fmt == FORMAT_BOUND:
        return f"coxswain-model-file/2\0{model}\0{version}\0{path}"
    raise ValueError(f"unknown encryption format {fmt}")


def encrypt(key: bytes, plaintext: bytes, associated: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated.encode())


def decrypt(key: bytes, stored: bytes, associated: str, what: str | None = None) -> bytes:
    """`what` names the file in errors (default: the associated data)."""
    what = what or associated
    if len(stored) < NONCE_BYTES + 16:
        raise DecryptionError(f"{what}: too short to be an encrypted file")
    try:
        return AESGCM(key).decrypt(stored[:NONCE_BYTES], stored[NONCE_BYTES:], associated.encode())
    except InvalidTag as exc:
        raise DecryptionError(
            f"{what}: decryption failed (wrong key, a modified file, or a file moved from another model, "
            "version or path)"
        ) from exc
