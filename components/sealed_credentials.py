"""The platform's credentials as they leave the server: sealed with a key only the program holds.
start-stack.sh prints them only sealed (`--print-sealed-credentials`), with a key the program
makes once per stack, keeps as a secret and hands over on the command's stdin."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re

# pulumi-command puts a failed command's stdout into its error text (remote/commandOutputs.go,
# `CommandOutputs.run`: "...: running <command>:\n<stdout and stderr>"), whatever its logging
# setting: an SSH session that drops after start-stack.sh has printed would show whatever it
# printed; the command's stdin, which carries the key, no error repeats.
SEALED_KEY = "sealed_credentials"
ITERATIONS = 10000
MAGIC = b"Salted__"
KEY_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# The local command that makes the key, once per stack: 32 random bytes as 64 hex digits.
KEY_COMMAND = 'python3 -c "import secrets; print(secrets.token_hex(32))"'


class SealError(ValueError):
    """What start-stack.sh printed cannot be opened with the stack's key."""


def _key_and_iv(key: str, salt: bytes) -> tuple[bytes, bytes]:
    derived = hashlib.pbkdf2_hmac("sha256", key.encode(), salt, ITERATIONS, 48)
    return derived[:32], derived[32:]


def _cipher(key: bytes, iv: bytes):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(key), modes.CBC(iv))


# The format is OpenSSL's own, so the server needs nothing but `openssl`:
#
#     openssl enc -aes-256-cbc -pbkdf2 -iter 10000 -md sha256 -salt -base64 -A -pass fd:3
#
# that is base64 of b"Salted__", an 8-byte salt and the AES-256-CBC ciphertext (PKCS#7
# padding), whose key and IV are PBKDF2-HMAC-SHA256(key text, salt, 10000 iterations, 48
# bytes) (apps/enc.c). No MAC: the SSH channel, whose host key is pinned, is what
# authenticates the server; the seal only keeps the text unreadable in an error.
def seal(plaintext: str, key: str, salt: bytes | None = None) -> str:
    """What `openssl enc` prints for `plaintext` (the tests' stand-in of start-stack.sh)."""
    from cryptography.hazmat.primitives import padding

    salt = os.urandom(8) if salt is None else salt
    aes_key, iv = _key_and_iv(key, salt)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode()) + padder.finalize()
    encryptor = _cipher(aes_key, iv).encryptor()
    body = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(MAGIC + salt + body).decode()


def unseal(sealed: str, key: str) -> str:
    """The plaintext of one sealed text; SealError when it is not one, or not for this key."""
    from cryptography.hazmat.primitives import padding

    try:
        raw = base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError):
        raise SealError("the sealed credentials are not base64") from None
    if len(raw) < 32 or not raw.startswith(MAGIC) or (len(raw) - 16) % 16:
        raise SealError("the sealed credentials are not in OpenSSL's salted format")
    aes_key, iv = _key_and_iv(key, raw[8:16])
    decryptor = _cipher(aes_key, iv).decryptor()
    padded = decryptor.update(raw[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plaintext = unpadder.update(padded) + unpadder.finalize()
        return plaintext.decode()
    except (ValueError, UnicodeDecodeError):
        raise SealError("the sealed credentials do not open with this stack's key") from None


def credentials_from_stdout(stdout: str | None, key: str | None) -> dict[str, str]:
    """The credentials in the start step's stdout; empty while either is unknown.

    The last line is `{"sealed_credentials": "..."}`; a state written before the seal holds
    the credentials as plain JSON, which is read as it is until the step runs again.
    """
    if not stdout:
        return {}
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return {}
    printed = json.loads(lines[-1])
    if not isinstance(printed, dict):
        raise SealError("start-stack.sh's last line is not a JSON object")
    if SEALED_KEY not in printed:
        return {str(name): str(value) for name, value in printed.items()}
    if not key:
        return {}
    opened = json.loads(unseal(str(printed[SEALED_KEY]), key.strip()))
    if not isinstance(opened, dict):
        raise SealError("the sealed credentials are not a JSON object")
    return {str(name): str(value) for name, value in opened.items()}
