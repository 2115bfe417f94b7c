"""Ed25519 signatures over a model's manifest, with a key the user holds.

The checksums in ``lepton.json`` catch damage; anyone who can edit the folder can also rewrite
them. A signature made with a private key only its owner holds catches deliberate tampering:
``lepton.json`` lists the sha256 of every file the model loads (and loading refuses files it
does not list), so signing those bytes signs the whole model.

    lepton keygen KEY              # KEY (private, 0600) and KEY.pub
    lepton sign OUT/model --key KEY
    lepton serve OUT/model --require-signature KEY.pub

The signature lives beside the manifest in ``lepton.json.sig``. The cryptography is the
``cryptography`` package's Ed25519; this module only reads and writes the files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton.core import atomic
from lepton.core.errors import MissingExtraError, SignatureError

log = logging.getLogger(__name__)

SIGNATURE = "lepton.json.sig"
MANIFEST = "lepton.json"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as err:
        raise MissingExtraError("signing needs cryptography: pip install 'lepton[sign]'") from err
    return ed25519


def _serialization() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization


def key_id(public_key: Any) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of sha256 of its raw bytes."""
    s = _serialization()
    raw = public_key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode``; never replace an existing key."""
    with atomic.io_errors(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise SignatureError(f"{path}: already exists; a key is never overwritten "
                                 "(move it away or choose another name)") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        atomic.fsync_dir(path.parent)


def keygen(private_path: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair: ``private_path`` (PEM, mode 0600) and ``private_path.pub``.
    Returns both paths and the key id."""
    ed25519 = _crypto()
    s = _serialization()
    if not str(private_path).strip() or Path(private_path).name in ("", ".", ".."):
        raise SignatureError(f"keygen: {str(private_path)!r} is not a file name for a key; give one, "
                             "e.g. lepton keygen keys/lepton")
    private = Path(private_path)
    public = private.with_name(private.name + ".pub")
    if public.exists():
        raise SignatureError(f"{public}: already exists; a key is never overwritten")
    key = ed25519.Ed25519PrivateKey.generate()
    _write_new(private, key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()), 0o600)
    _write_new(public, key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo),
               0o644)
    return private, public, key_id(key.public_key())


def _load_key(path: str | os.PathLike[str], private: bool) -> Any:
    ed25519 = _crypto()
    s = _serialization()
    p = Path(path)
    what = "private" if private else "public"
    if p.exists() and not p.is_file():  # a folder, a FIFO (reading would block), a device
        raise SignatureError(f"{p}: the {what} key is not a regular file")
    try:
        data = p.read_bytes()
    except OSError as err:
        raise SignatureError(f"{p}: cannot read the {what} key ({atomic.describe(err)})") from None
    try:
        key = (s.load_pem_private_key(data, password=None) if private else s.load_pem_public_key(data))
    except (ValueError, TypeError) as err:
        raise SignatureError(f"{p}: not a PEM {what} key without a passphrase "
                             f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    expected = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, expected):
        raise SignatureError(f"{p}: not an Ed25519 {what} key (make one with lepton keygen)")
    return key


def sign_manifest(model_dir: str | os.PathLike[str], private_key: str | os.PathLike[str], *,
                  verify: Callable[[Path], Any]) -> tuple[Path, str]:
    """Sign ``model_dir``'s manifest into ``lepton.json.sig`` once ``verify`` (the artifact's
    manifest reader, ``lepton.pipeline.artifact.sign_model``) has checked every file: never vouch
    for a damaged model."""
    folder = Path(model_dir)
    key = _load_key(private_key, private=True)
    verify(folder)
    data = (folder / MANIFEST).read_bytes()
    record = {"algorithm": "ed25519", "key_id": key_id(key.public_key()),
              "manifest_sha256": hashlib.sha256(data).hexdigest(),
              "signature": base64.b64encode(key.sign(data)).decode("ascii")}
    path = folder / SIGNATURE
    atomic.write_text(path, json.dumps(record, indent=2) + "\n")
    return path, record["key_id"]


def read_signature(folder: Path) -> dict[str, Any] | None:
    """The signature record of a model folder, None when it has none."""
    path = folder / SIGNATURE
    if not path.is_file():
        return None
    try:
        record = atomic.loads_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SignatureError(f"{path}: unreadable signature file ({atomic.describe(err)})") from None
    if not isinstance(record, dict) or record.get("algorithm") != "ed25519" or not isinstance(
            record.get("signature"), str):
        raise SignatureError(f"{path}: not a Lepton signature file (expected an ed25519 record)")
    return record


def verify(model_dir: str | os.PathLike[str], public_key: str | os.PathLike[str]) -> str:
    """Check that ``model_dir``'s manifest is signed by the holder of ``public_key``; returns the
    key id. Raises SignatureError when unsigned, signed by another key, or edited since."""
    from cryptography.exceptions import InvalidSignature

    folder = Path(model_dir)
    key = _load_key(public_key, private=False)
    trusted = key_id(key)
    record = read_signature(folder)
    if record is None:
        raise SignatureError(f"{folder}: not signed (no {SIGNATURE}), and a signature is required; "
                             "sign it with lepton sign MODEL --key KEY")
    if record.get("key_id") != trusted:
        raise SignatureError(f"{folder / SIGNATURE}: signed with key {record.get('key_id')}, not with the "
                             f"trusted key {trusted} ({public_key})")
    try:
        signature = base64.b64decode(record["signature"], validate=True)
        key.verify(signature, (folder / MANIFEST).read_bytes())
    except (InvalidSignature, ValueError):
        raise SignatureError(f"{folder / SIGNATURE}: the signature does not match {MANIFEST} "
                             "(the manifest was changed after signing)") from None
    except OSError as err:
        raise SignatureError(f"{folder / MANIFEST}: cannot read ({atomic.describe(err)})") from None
    return trusted
