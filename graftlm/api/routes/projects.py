"""Projects, their keys and the audit log (under /v1). Who may call what is graftlm.api.auth's policy table:
projects are the instance admin key's; a project's keys and audit trail its admin's."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from graftlm.api.limits import JSONInThreadRoute
from graftlm.keys import audit, projects
from graftlm.keys import service as keys

router = APIRouter(route_class=JSONInThreadRoute)
Policy = Literal["warn", "redact", "reject"]
Quota = int | None


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)
    description: str | None = Field(None, max_length=2000)
    data_policy: Policy = "warn"
    max_clusters: Quota = Field(None, ge=0)
    max_units: Quota = Field(None, ge=0)
    max_file_bytes: Quota = Field(None, ge=0)


class ProjectPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(None, max_length=2000)
    data_policy: Policy | None = None
    max_clusters: Quota = Field(None, ge=0)
    max_units: Quota = Field(None, ge=0)
    max_file_bytes: Quota = Field(None, ge=0)


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("default", min_length=1, max_length=200)
    role: Literal["metrics", "viewer", "editor", "admin"] = "editor"
    expires_at: int | None = Field(None, description="unix seconds; the key is refused afterwards")


@router.post("/projects")
async def create_project(body: ProjectIn):
    return await run_in_threadpool(lambda: projects.create_project(**body.model_dump()))


@router.get("/projects")
async def list_projects():
    return await run_in_threadpool(projects.list_projects)


@router.get("/projects/{project_id}")
async def get_project(project_id: str):
    return await run_in_threadpool(projects.get_project, project_id)


@router.patch("/projects/{project_id}")
async def update_project(project_id: str, body: ProjectPatch):
    """Changes the fields sent; a quota sent as null is removed."""
    return await run_in_threadpool(lambda: projects.update_project(project_id, **body.model_dump(exclude_unset=True)))


@router.delete("/projects/{project_id}")
async def delete_project(project_id: str):
    return await run_in_threadpool(projects.delete_project, project_id)


@router.get("/projects/{project_id}/keys")
async def list_keys(project_id: str):
    def run():
        projects.get_project(project_id)
        return {"object": "list", "data": keys.list_keys(project_id), "has_more": False}
    return await run_in_threadpool(run)


@router.post("/projects/{project_id}/keys")
async def create_key(project_id: str, body: KeyIn):
    """The secret is in the answer (``key``) once; only its hash is stored."""
    def run():
        projects.get_project(project_id)
        secret, record = keys.create_key(body.name, role=body.role, project=project_id, expires_at=body.expires_at)
        return record | {"key": secret}
    return await run_in_threadpool(run)


@router.delete("/projects/{project_id}/keys/{key_id}")
async def revoke_key(project_id: str, key_id: str):
    def run():
        projects.get_project(project_id)
        return keys.revoke_key(key_id, project_id)
    return await run_in_threadpool(run)


@router.get("/audit_events")
async def list_audit_events(request: Request, project: str | None = None, key_id: str | None = None,
                            action: str | None = None, outcome: Literal["allowed", "denied", "failed"] | None = None,
                            since: float | None = Query(None, ge=0), until: float | None = Query(None, ge=0),
                            after: str | None = None, limit: int = Query(100, ge=1, le=audit.MAX_PAGE)):
    """Newest first. A project admin sees its project's events; the instance admin key sees every project's
    unless ``project`` (or the OpenAI-Project header) narrows them."""
    key = request.state.key
    every = key["instance_admin"] and not request.headers.get("openai-project")
    return await run_in_threadpool(lambda: audit.list_events(
        project=project, key_id=key_id, action=action, outcome=outcome, since=since, until=until, after=after,
        limit=limit, all_projects=every))
