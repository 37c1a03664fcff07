"""Password hashing (more security helpers arrive with authentication)."""

import base64
import hashlib

import bcrypt

BCRYPT_ROUNDS = 12


def _prehash(password: str) -> bytes:
    """bcrypt reads only 72 bytes (bcrypt 5 refuses more). Hashing first with SHA-256 and
    base64 (44 bytes, no NUL) keeps every byte of a long password significant."""
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds)).decode("ascii")


def verify_password(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(_prehash(password), hashed.encode("ascii"))
    except ValueError:
        return False
