"""Datagram signing keys: the collector's keys file and a sender's secret file.

The wire format is ``healthmon.schema``'s (``sign``, ``split_signature``); the
collector's checks are ``ingest.guard``'s.  Here are the two files:

- the collector's ``signing_keys_file``: YAML, one mapping of key id to shared
  secret, one key per sender or group of senders (so one leaked key is
  revoked alone)::

      agent-eu-1: "kDq3...long random text..."
      mock: "..."

- a sender's secret file (``--secret-file``, given with ``--key-id``): the
  secret alone, surrounding whitespace ignored.  Secrets are never given on the
  command line, where ``ps`` would show them.

Key ids are names (1-128 characters of ``[A-Za-z0-9._:-]``); a secret is text
of at least ``MIN_SECRET_CHARS`` characters, used as its UTF-8 bytes.  A file
that others may read is used, with a warning.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import yaml

from healthmon.config import ConfigError
from healthmon.schema import KEY_ID_RE

log = logging.getLogger(__name__)

MIN_SECRET_CHARS = 16  # shorter secrets are refused: an HMAC key should not be guessable


def _warn_if_readable_by_others(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s %s can be read by other users (mode %o): chmod 600 it", what, path, mode & 0o777)


def _check_secret(secret: object, where: str) -> bytes:
    if not isinstance(secret, str):
        raise ConfigError(f"{where}: the secret must be text (quote it in YAML), not {type(secret).__name__}")
    secret = secret.strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"{where}: the secret has {len(secret)} characters, fewer than {MIN_SECRET_CHARS}")
    return secret.encode("utf-8")


def load_keys(path_text: str) -> dict[str, bytes]:
    """Key id -> secret from the YAML keys file; ConfigError naming ``signing_keys_file`` when it cannot be used."""
    if not path_text:
        raise ConfigError("signing_keys_file is empty: signing=optional|required needs a keys file")
    path = Path(path_text)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"signing_keys_file={path_text!r}: cannot read it ({exc.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"signing_keys_file={path_text!r}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"signing_keys_file={path_text!r}: must be a non-empty mapping of key id to secret")
    keys = {}
    for key_id, secret in loaded.items():
        if not isinstance(key_id, str) or not KEY_ID_RE.match(key_id):
            raise ConfigError(f"signing_keys_file={path_text!r}: key id {str(key_id)[:40]!r} is not 1-128 characters of [A-Za-z0-9._:-]")
        keys[key_id] = _check_secret(secret, f"signing_keys_file={path_text!r}, key {key_id!r}")
    _warn_if_readable_by_others(path, "signing_keys_file")
    return keys


def read_secret(path_text: str) -> bytes:
    """The secret of a sender's secret file; ConfigError when it cannot be used."""
    path = Path(path_text)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--secret-file {path_text!r}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--secret-file {path_text!r}: not UTF-8 text") from None
    secret = _check_secret(text, f"--secret-file {path_text!r}")
    _warn_if_readable_by_others(path, "secret file")
    return secret


def add_sender_arguments(parser: argparse.ArgumentParser) -> None:
    """``--key-id`` and ``--secret-file`` of a sender (the agent, the mock services)."""
    parser.add_argument("--key-id", default=None, help="sign every datagram with this key id (needs --secret-file)")
    parser.add_argument("--secret-file", default=None, help="file holding the secret of --key-id (never give a secret on the command line)")


def sender_key(args: argparse.Namespace) -> tuple[str, bytes] | None:
    """(key id, secret) from ``--key-id``/``--secret-file``, None when not signing; ConfigError when only one is given or bad."""
    key_id, secret_file = getattr(args, "key_id", None), getattr(args, "secret_file", None)
    if key_id is None and secret_file is None:
        return None
    if key_id is None or secret_file is None:
        raise ConfigError("--key-id and --secret-file go together")
    if not KEY_ID_RE.match(key_id):
        raise ConfigError(f"--key-id {key_id[:40]!r}: must be 1-128 characters of [A-Za-z0-9._:-]")
    return key_id, read_secret(os.path.expanduser(secret_file))
