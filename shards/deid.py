"""De-identification: salted subject pseudonyms; the salt lives outside every output directory.

A subject's pseudonym is `s` + the first 16 hex digits of HMAC-SHA256(salt, source identity), where the identity is
the DICOM PatientID (or the BIDS `sub-` label / file stem of a NIfTI, the folder of an image stack). The same salt
gives the same pseudonyms on every rebuild, so a subject keeps its split; without the salt a pseudonym cannot be
traced back by hashing candidate identities. Outputs never hold the salt, patient fields or source paths.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from cmgan import files

log = logging.getLogger(__name__)

SALT_ENV = "CMGAN_SALT_FILE"
DEFAULT_SALT_FILE = "~/.config/cmgan/pseudonym-salt"


class SaltError(ValueError):
    """The salt file is unusable or would end up inside an output."""


def default_salt_file() -> Path:
    """`$CMGAN_SALT_FILE`, else ~/.config/cmgan/pseudonym-salt."""
    return Path(os.environ.get(SALT_ENV, DEFAULT_SALT_FILE)).expanduser()


def load_or_create_salt(path: str | Path | None, out_dir: str | Path) -> tuple[bytes, Path]:
    """Read the salt at `path` (default `default_salt_file()`), creating it (32 random bytes, mode 0600) if absent.

    Refuses a salt file inside `out_dir`: the outputs are shared, the salt must not be.
    returns (salt bytes, resolved path)
    """
    path = (Path(path).expanduser() if path else default_salt_file()).resolve()
    out = Path(out_dir).resolve()
    if path == out or out in path.parents:
        raise SaltError(f"salt file {path} is inside the output directory {out}; keep it outside (--salt-file)")
    if path.exists():
        text = path.read_text().strip()
        if len(text) < 32:
            raise SaltError(f"salt file {path} holds {len(text)} characters; expected at least 32 (hex)")
        return text.encode("ascii"), path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.temp_path(path)  # mode 0600 from the start, then hard-linked (not renamed): see below
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)  # atomic create-if-absent: two builds starting together agree on one salt
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    log.warning("created a new pseudonym salt at %s (keep it private; rebuilds need it for stable pseudonyms)", path)
    return load_or_create_salt(path, out_dir)


def pseudonym(salt: bytes, identity: str, prefix: str = "s") -> str:
    """Salted pseudonym of a source identity: prefix + 16 hex digits (no '.', '/', '_' so it is a valid key part)."""
    digest = hmac.new(salt, identity.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}{digest[:16]}"
