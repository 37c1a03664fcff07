"""Security primitives: password hashing and policy, TOTP, recovery codes, CSRF tokens,
IP anonymisation, response headers. No I/O and no framework state here."""

import base64
import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
import string
from datetime import datetime
from urllib.parse import unquote

import bcrypt
import pyotp
import segno
from pyotp.exceptions import OTPVerificationError

BCRYPT_ROUNDS = 12
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
RECOVERY_CODE_COUNT = 10
TOTP_ISSUER = "TraitorTrack"


# Passwords ------------------------------------------------------------------------------------


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


@functools.cache
def _decoy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def burn_password_check(password: str) -> None:
    """Spend the time of a real check, so unknown users answer as slowly as wrong passwords."""
    verify_password(password, _decoy_hash())


def password_problems(password: str) -> list[str]:
    """What a new password lacks; empty when it is acceptable (SPEC §5)."""
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        problems.append(f"at most {MAX_PASSWORD_LENGTH} characters")
    for pattern, need in (
        (r"[A-Z]", "an upper-case letter"),
        (r"[a-z]", "a lower-case letter"),
        (r"[0-9]", "a digit"),
        (r"[^A-Za-z0-9]", "a symbol"),
    ):
        if not re.search(pattern, password):
            problems.append(need)
    return problems


def generate_password() -> str:
    """A random password that satisfies the policy (for resets and first starts)."""
    while True:
        candidate = (
            secrets.token_urlsafe(12) + secrets.choice("!#%+-=") + secrets.choice(string.digits)
        )
        if not password_problems(candidate):
            return candidate


# TOTP and recovery codes ----------------------------------------------------------------------


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)


def totp_qr_svg(uri: str) -> str:
    """The enrolment QR code, rendered here: the secret never leaves our server."""
    return segno.make(uri, error="m").svg_inline(scale=5, dark="#000", light="#fff")


def totp_step(secret: str, code: str, at: datetime) -> int | None:
    """The time step a code belongs to (one step of clock drift allowed), or None.

    Callers must accept a step only if it is later than the last one accepted: pyotp itself
    has no memory, so the same code would pass again within its window.
    """
    code = code.strip().replace(" ", "")
    if not re.fullmatch(r"[0-9]{6}", code):
        return None
    try:
        return pyotp.TOTP(secret).verify_and_get_timecode(code, for_time=at, valid_window=1)
    except OTPVerificationError:
        return None


def new_recovery_codes() -> list[str]:
    return [f"{secrets.token_hex(3)}-{secrets.token_hex(3)}" for _ in range(RECOVERY_CODE_COUNT)]


def hash_recovery_code(code: str) -> str:
    """Recovery codes are 48 random bits; a plain SHA-256 keeps them unreadable at rest."""
    return hashlib.sha256(code.strip().lower().encode()).hexdigest()


# Tokens, addresses, headers -------------------------------------------------------------------


def new_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: object) -> bool:
    return (
        isinstance(expected, str)
        and isinstance(given, str)
        and hmac.compare_digest(expected.encode(), given.encode())
    )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _plainly_local(path: str) -> bool:
    return (
        path.startswith("/")
        and not path.startswith("//")
        and all(ch.isprintable() and not ch.isspace() for ch in path)
    )


def same_site_path(target: str) -> str | None:
    """``target`` when it can only mean a path on this site, else None.

    Browsers read ``\\`` as ``/`` and drop tabs and newlines, so ``/\\evil.com`` and
    ``/<tab>/evil.com`` mean ``//evil.com``: another site. Backslashes count as slashes here,
    any whitespace or control character refuses the target, and so does a target whose
    percent-decoded forms would not pass too (a proxy or a later redirect may decode it).
    """
    form = target
    for _ in range(3):
        if not _plainly_local(form.replace("\\", "/")):
            return None
        decoded = unquote(form)
        if decoded == form:
            return target
        form = decoded
    return None


def client_key(address: str | None, secret: str) -> str:
    """Who is signing in, for counting failures: a keyed hash, so the address itself is never
    stored. IPv6 counts per /64, the block one subscriber gets; IPv4 per address."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        network = "unknown"
    else:
        prefix = 32 if ip.version == 4 else 64
        network = str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
    return hmac.new(secret.encode(), network.encode(), hashlib.sha256).hexdigest()


def anonymize_ip(address: str | None) -> str | None:
    """Keep the network, drop the host: /24 for IPv4, /48 for IPv6."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def security_headers(production: bool, camera: bool) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": (
            f"camera=({'self' if camera else ''}), microphone=(), geolocation=(), payment=()"
        ),
    }
    if production:
        headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
    return headers
