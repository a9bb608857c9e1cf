"""Administration of the running service: `POST /v1/admin/reload` serves newly promoted models."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request

from ragtune.api.access import ADMIN, KeyScope, needs
from ragtune.api.errors import ApiError
from ragtune.api.reload import Reloader, ReloadError
from ragtune.api.schemas import ErrorResponse, ReloadResponse, ServingOut

router = APIRouter(prefix="/v1/admin", tags=["admin"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 403, 409, 429, 500, 503)}
Admin = Annotated[KeyScope, Depends(needs(ADMIN, "reloading the service"))]


@router.post("/reload", response_model=ReloadResponse, responses=_ERRORS)
async def reload(request: Request, scope: Admin) -> ReloadResponse:
    """Serve the models promoted since the service started (`ragtune tune … --promote`) without a restart.

    An adapter is swapped in without stopping queries; a new embedder reopens the store, during which
    requests answer 503 `starting` for a few seconds. Needs an admin key that holds every collection.
    """
    if scope.collections is not None:
        raise ApiError(403, "forbidden", "reloading serves every collection; it needs an admin key without collections")
    reloader: Reloader | None = getattr(request.app.state, "reloader", None)
    if reloader is None:
        raise ApiError(503, "starting", "the service is still starting; retry in a few seconds")
    if request.app.state.tune_runner.busy:  # it uses the services a reload would close
        raise ApiError(409, "tune_busy", "a tuning job is running; it reloads the service itself when it promotes")
    try:
        result = await anyio.to_thread.run_sync(reloader.reload)
    except ReloadError as exc:
        raise ApiError(500, "reload_failed", str(exc)) from None
    return ReloadResponse(reloaded=result.reloaded, serving=ServingOut(**asdict(result.serving)))
