"""What ``lepton serve`` can be told (``ServeSettings``), its one-line error, and the checks made
before a model loads; shared by the prediction app, the generative app and the monitor's server."""

from __future__ import annotations

import importlib
import socket
from types import ModuleType

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lepton.core.errors import LeptonError, MissingExtraError

# How `lepton serve --workers N` hands the model and settings to each worker process.
ENV_MODEL = "LEPTON_SERVE_MODEL"
ENV_SETTINGS = "LEPTON_SERVE_SETTINGS"
DRAIN_GRACE_S = 5.0  # after the drain deadline, for answers still being written to slow clients


class ServeError(LeptonError):
    """The server cannot start with the given settings (bad limit, port in use ...)."""


class ServeSettings(BaseModel):
    """Everything ``lepton serve`` can be told; the defaults are the CLI's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)  # processes; each loads its own copy of the model
    name: str | None = None  # shown in /v1/model; default: the artifact's run folder name
    max_batch: int = Field(32, ge=1, le=4096)  # inputs gathered from concurrent requests
    # Inputs per model call within a gathered batch (length-sorted sub-batches); None: the size
    # with the lowest time per input, measured on this machine when the server starts.
    model_batch: int | None = Field(None, ge=1, le=4096)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)  # how long a batch waits for company
    max_queue: int = Field(256, ge=1)  # requests waiting for a batch; beyond it: 503
    max_inputs: int = Field(64, ge=1)  # inputs in one request
    max_chars: int = Field(10_000, ge=1)  # characters in one input text
    max_body_bytes: int = Field(1 << 20, ge=1)  # request body size; beyond it: 413
    # Graceful shutdown: in-flight requests have this long after SIGTERM; what cannot finish
    # in time is answered 503 with Retry-After.
    drain_timeout_s: float = Field(30.0, ge=0, le=3600)
    header_timeout_s: float = Field(10.0, gt=0, le=3600)  # a request's headers must arrive in time
    body_timeout_s: float = Field(30.0, gt=0, le=3600)  # a body that stalls this long: 408
    require_signature: str | None = None  # a public key file: serve only a model its holder signed
    # Turns POST /v1/admin/swap on (Authorization: Bearer TOKEN); None: the admin routes are off (404).
    admin_token: str | None = Field(None, min_length=8, repr=False)
    access_log: bool = False
    log_level: str = "info"

    @classmethod
    def build(cls, **values: object) -> ServeSettings:
        """Validate, turning a bad value into one ServeError line naming the option."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as err:
            first = err.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            field = field[:-2] if field.endswith("_s") else field  # drain_timeout_s: --drain-timeout
            option = "--" + field.replace("_", "-") if field else "settings"
            got = "" if field == "admin_token" else f" (got {first.get('input')!r})"  # never echo a secret
            raise ServeError(f"{option}: {first['msg']}{got}") from None


def require(module: str, extra: str = "serve") -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{module} is needed here: pip install 'lepton[{extra}]'") from err


def check_port(host: str, port: int) -> None:
    """Fail in one line, before the model loads, when the address cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
