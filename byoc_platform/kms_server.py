"""The local KMS: moto's KMS endpoint, with its keys persisted across restarts.

moto keeps state in memory only; a restarted KMS would have lost the key material that wraps
every archived file's data keys, leaving the archive unreadable. This process runs moto's
server in-process and saves the KMS keys (material, state, aliases) to a state file whenever
they change, restoring them on start. It is a development KMS: key material sits in the data
directory. In a cluster the platform uses the cloud's KMS (deploy/terraform).

Run: ``python -m byoc_platform.kms_server --state-file F --host 127.0.0.1 --port 4599``.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from byoc_platform import logs

log = logging.getLogger("byoc.kms")

ACCOUNT_ID = "123456789012"  # moto's default account


def _backends(regions: list[str]) -> dict[str, Any]:
    from moto.kms.models import kms_backends

    return {region: kms_backends[ACCOUNT_ID][region] for region in regions}


def _fingerprint(backends: dict[str, Any]) -> tuple:
    return tuple(
        (
            region,
            key.id,
            key.key_state,
            key.enabled,
            key.key_rotation_status,
            tuple(sorted(key.aliases)),
            key.policy,
        )
        for region, backend in sorted(backends.items())
        for key in sorted(backend.keys.values(), key=lambda k: k.id)
    )


def _key_state(key: Any) -> dict[str, Any]:
    # moto's Key is a plain object but for its RSA key (moto makes one even for symmetric
    # keys, unused by them): drop it and make a fresh one on restore. Only SYMMETRIC_DEFAULT
    # keys (all this platform uses) keep working across restarts.
    state = dict(key.__dict__)
    state.pop("private_key", None)
    return state


def _key_from_state(state: dict[str, Any]) -> Any:
    from moto.kms.models import Key
    from moto.kms.utils import generate_private_key

    key = object.__new__(Key)
    key.__dict__.update(state)
    key.private_key = generate_private_key(state.get("key_spec") or "SYMMETRIC_DEFAULT")
    return key


def save(path: Path, backends: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    data = {
        region: {key_id: _key_state(key) for key_id, key in b.keys.items()}
        for region, b in backends.items()
    }
    with open(tmp, "wb") as out:
        pickle.dump(data, out)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def restore(path: Path, backends: dict[str, Any]) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as src:
        saved: dict[str, dict[str, Any]] = pickle.load(src)  # our own file, written by save()
    count = 0
    for region, keys in saved.items():
        if region in backends:
            backends[region].keys.update(
                {key_id: _key_from_state(state) for key_id, state in keys.items()}
            )
            count += len(keys)
    return count


def refuse_unusable_keys(backend: Any) -> None:
    """Make Encrypt/Decrypt (and what is built on them) refuse keys that are not Enabled.

    AWS KMS answers DisabledException / KMSInvalidStateException for a disabled key or one
    pending deletion; moto answers as if the key were enabled, which would make "disable the
    key and the archive is unreadable" (invariant 7) untestable locally.
    """
    from moto.core.exceptions import JsonRESTError

    encrypt, decrypt = backend.encrypt, backend.decrypt

    def check(key_id: str) -> None:
        key = backend.keys[key_id]
        if key.key_state == "Disabled":
            raise JsonRESTError("DisabledException", f"{key.arn} is disabled.")
        if key.key_state != "Enabled":
            raise JsonRESTError("KMSInvalidStateException", f"{key.arn} is {key.key_state}.")

    def checked_encrypt(key_id: str, plaintext: bytes, encryption_context: Any) -> Any:
        check(backend.any_id_to_key_id(key_id))
        return encrypt(key_id=key_id, plaintext=plaintext, encryption_context=encryption_context)

    def checked_decrypt(
        ciphertext_blob: bytes, encryption_context: Any, key_id: str | None = None
    ) -> Any:
        plaintext, arn = decrypt(
            ciphertext_blob=ciphertext_blob, encryption_context=encryption_context, key_id=key_id
        )
        check(arn.rsplit("/", 1)[-1])  # the key the ciphertext names
        return plaintext, arn

    backend.encrypt, backend.decrypt = checked_encrypt, checked_decrypt


def serve(state_file: Path, host: str, port: int, regions: list[str]) -> None:
    from moto.server import ThreadedMotoServer

    backends = _backends(regions)
    for backend in backends.values():
        refuse_unusable_keys(backend)
    restored = restore(state_file, backends)
    # ThreadedMotoServer binds in its own thread and, when that fails, start() waits for
    # ever: try the address here first, so a busy port or an unknown host ends this process.
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise SystemExit(f"kms: cannot listen on {host}:{port}: {exc}") from exc
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    log.info("KMS serving on %s:%d (%d keys restored from %s)", host, port, restored, state_file)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    last = _fingerprint(backends)
    # Poll for changes: moto has no change hook; a key created is saved within 200 ms.
    while not stop.wait(0.2):
        current = _fingerprint(backends)
        if current != last:
            save(state_file, backends)
            last = current
            log.info("KMS state saved (%d keys)", len(current))
    if _fingerprint(backends) != last:
        save(state_file, backends)
    server.stop()
    log.info("KMS stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local KMS (moto) with persisted keys")
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4599)
    parser.add_argument("--region", action="append", default=None)
    args = parser.parse_args(argv)
    logs.configure("kms")
    args.state_file.parent.mkdir(parents=True, exist_ok=True)
    serve(args.state_file, args.host, args.port, args.region or ["us-east-1"])


if __name__ == "__main__":
    main()
