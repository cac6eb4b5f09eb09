"""/api/twins: the site's twins with their live state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from control.api.deps import Viewer, get_platform
from twin.model import Kind

router = APIRouter(prefix="/api/twins", tags=["twins"], dependencies=[Viewer])


def _twin_record(platform: Any, spec: Any) -> dict[str, Any]:
    view = platform.world.state.twin(spec.id)
    return {**view.as_dict(), "building": spec.building, "floor": spec.floor, "room": spec.room,
            "account": spec.account, "master": spec.master, "role": spec.role}


@router.get("", summary="List twins with their live state")
async def list_twins(request: Request, kind: Kind | None = None, building: str | None = None,
                     limit: int = Query(100, ge=1, le=5000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    """Twins in site order, filtered by kind and building, each with its reported,
    desired and derived state and their timestamps (UTC epoch seconds).

    Example: `GET /api/twins?kind=valve&building=B01&limit=10`."""
    platform = get_platform(request)
    chosen = [t for t in platform.scenario.site.twins
              if (kind is None or t.kind is kind) and (building is None or t.building == building)]
    async with platform.lock:
        items = [_twin_record(platform, t) for t in chosen[offset:offset + limit]]
    return {"total": len(chosen), "offset": offset, "items": items}


@router.get("/{twin_id}", summary="One twin with its live state")
async def get_twin(request: Request, twin_id: str) -> dict[str, Any]:
    """Example: `GET /api/twins/B01-02-03.em`."""
    platform = get_platform(request)
    spec = platform.twin_specs.get(twin_id)
    if spec is None:
        raise HTTPException(404, f"no twin {twin_id!r}; ids look like B01-02-03.em")
    async with platform.lock:
        return _twin_record(platform, spec)
