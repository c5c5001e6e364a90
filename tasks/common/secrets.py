"""Secrets in options: refused where they are given, redacted wherever options are recorded.

In:  an options mapping (fsspec ``storage_options``, nested ``client_kwargs``/``config_kwargs`` included)
     or any JSON-like value (a manifest's config, a flow run's parameters, a log line's arguments).
Out: :func:`secret_option_names`: the dotted names of the secret-looking entries of an options mapping;
     :func:`refuse_secret_options`: raises :class:`~tasks.common.errors.InputError` listing every one
     of them (names only, never a value) and saying where credentials go instead: the environment
     (``AWS_ACCESS_KEY_ID``...) or a Prefect Secret block named by ``credentials_block``. Inside a
     Prefect flow run it first overwrites the run's recorded parameters (and its parent runs') with
     their redacted form, so the values given do not stay in the API;
     :func:`redact`: a copy of a JSON-like value with the value of every secret-looking key, and the
     password of every ``scheme://user:password@host`` URL, replaced by ``REDACTED``.

A key is secret-looking when its lower-case name is one of :data:`SECRET_NAMES` or contains one of
:data:`SECRET_PARTS` (``aws_secret_access_key``, ``sas_token``, ``client_secret``...);
``credentials_block`` (the name of a block, not a secret) is not.
"""

from __future__ import annotations

import re
from typing import Any

from tasks.common.errors import InputError

REDACTED = "***"
CREDENTIALS_BLOCK = "credentials_block"
SECRET_NAMES = frozenset({"key", "secret", "token", "password", "passwd", "pwd"})
SECRET_PARTS = ("secret", "password", "passwd", "token", "access_key", "accesskey", "account_key",
                "private_key", "api_key", "apikey", "credential", "connection_string", "authorization")
# user:password@ in a URL; a password may hold '/' (a URL with a port and an '@' later in its path is
# over-redacted, which is harmless)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^\s@]+(?=@)")


def is_secret_name(name: Any) -> bool:
    """Whether an option or field called ``name`` holds a secret."""
    lowered = str(name).lower()
    return lowered != CREDENTIALS_BLOCK and (lowered in SECRET_NAMES or any(p in lowered for p in SECRET_PARTS))


def secret_option_names(options: Any, prefix: str = "") -> list[str]:
    """Dotted names (``client_kwargs.aws_secret_access_key``) of the secret-looking entries of ``options``,
    at any depth of nested mappings, in the mapping's order."""
    if not isinstance(options, dict):
        return []
    found = []
    for name, value in options.items():
        dotted = f"{prefix}{name}"
        if is_secret_name(name) and value not in (None, ""):
            found.append(dotted)
        elif isinstance(value, dict):
            found += secret_option_names(value, f"{dotted}.")
    return found


def refuse_secret_options(options: dict[str, Any] | None, parameter: str = "storage_options") -> None:
    """Raise :class:`InputError` when ``options`` (the flow parameter ``parameter``) hold a secret,
    naming every such entry (never its value)."""
    found = secret_option_names(options or {})
    if not found:
        return
    _redact_recorded_parameters()
    names = ", ".join(repr(name) for name in found)
    raise InputError(
        f"{parameter} {names}: credentials must not be given as options (they would be saved in flow-run "
        "parameters, manifests, logs and blocks). Set them in the environment of the worker (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), or save them as a JSON object in a Prefect Secret block "
        "(Secret(value={\"key\": ..., \"secret\": ...}).save(\"s3-creds\")) and pass "
        f"{parameter}={{\"credentials_block\": \"s3-creds\"}}. Refused option names: "
        f"{', '.join(sorted(SECRET_NAMES))} and any containing {', '.join(SECRET_PARTS)}")


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, tuples, strings, other scalars) with secrets replaced by ``REDACTED``."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_name(k) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str) and "@" in value:
        return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, value)
    return value


def _redact_recorded_parameters() -> None:
    """In a flow run: replace its recorded parameters, and those of the runs above it, by their redacted
    form (best effort: a failure here must not hide the InputError being raised)."""
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            return
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            run_id = context.flow_run.id
            for _ in range(16):  # nested subflows, bounded
                run = client.read_flow_run(run_id)
                cleaned = redact(run.parameters)
                if cleaned != run.parameters:
                    client.update_flow_run(run_id, parameters=cleaned)
                if run.parent_task_run_id is None:
                    return
                run_id = client.read_task_run(run.parent_task_run_id).flow_run_id
    except Exception:  # noqa: BLE001 - best effort, see above
        return
