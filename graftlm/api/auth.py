"""Bearer-key authentication for every route but /healthz, and the one authorization function every route goes
through: ``required_role`` (a policy table from route to role), then the project the request acts in.

A key belongs to one project with a role (metrics < viewer < editor < admin); the instance admin key manages
projects and acts in the project the request names (``OpenAI-Project`` header, as the official ``openai``
client sends it for ``project=``), else ``default``. A project key that names another project is refused. The
project is set for the rest of the request (graftlm.store.scope), so every query the handler makes sees only
that project's rows: another project's resource is a 404 like an unknown id.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from graftlm.errors import GraftError, NotFound
from graftlm.keys.service import ROLES, key_identity
from graftlm.store import scope
from graftlm.store.models import DEFAULT_PROJECT

READ_METHODS = {"GET", "HEAD", "OPTIONS"}
PROJECT_HEADER = "openai-project"
INSTANCE_ADMIN = "instance_admin"  # above every role: the instance admin key only


class Unauthorized(GraftError):
    status_code = 401
    error_type = "authentication_error"


class Forbidden(GraftError):
    status_code = 403
    error_type = "permission_error"


@dataclass(frozen=True)
class Rule:
    role: str  # the least role that may call the route
    mutating: bool  # recorded in the audit log (denied calls of any route are recorded too)


# The policy: (method, route) -> Rule. A route not listed reads (GET: viewer) or changes (else: editor, audited).
POLICY: dict[tuple[str, str], Rule] = {
    ("GET", "/metrics"): Rule("metrics", False),
    # running a model or a search changes nothing: an editor's verb, not audited
    ("POST", "/v1/chat/completions"): Rule("editor", False),
    ("POST", "/v1/completions"): Rule("editor", False),
    ("POST", "/v1/embeddings"): Rule("editor", False),
    ("POST", "/v1/knowledge_bases/{kb_id}/search"): Rule("viewer", False),
    # projects: the instance admin; a project's keys and its audit trail: that project's admin
    ("POST", "/v1/projects"): Rule(INSTANCE_ADMIN, True),
    ("GET", "/v1/projects"): Rule(INSTANCE_ADMIN, False),
    ("GET", "/v1/projects/{project_id}"): Rule("admin", False),
    ("PATCH", "/v1/projects/{project_id}"): Rule(INSTANCE_ADMIN, True),
    ("DELETE", "/v1/projects/{project_id}"): Rule(INSTANCE_ADMIN, True),
    ("GET", "/v1/projects/{project_id}/keys"): Rule("admin", False),
    ("POST", "/v1/projects/{project_id}/keys"): Rule("admin", True),
    ("DELETE", "/v1/projects/{project_id}/keys/{key_id}"): Rule("admin", True),
    ("GET", "/v1/audit_events"): Rule("admin", False),
}


def policy(method: str, route: str) -> Rule:
    method = method.upper()
    rule = POLICY.get((method, route))
    if rule is not None:
        return rule
    return Rule("viewer", False) if method in READ_METHODS else Rule("editor", True)


def required_role(method: str, route: str) -> str:
    """The least role ``method route`` needs (``route`` is the path template, e.g. /v1/files/{file_id})."""
    return policy(method, route).role


def has_role(identity_or_role, needed: str) -> bool:
    if isinstance(identity_or_role, dict):
        if needed == INSTANCE_ADMIN:
            return bool(identity_or_role.get("instance_admin"))
        role = identity_or_role["role"]
    else:
        role = identity_or_role
        if needed == INSTANCE_ADMIN:
            return False
    return ROLES.index(role) >= ROLES.index(needed)


def route_of(request: Request) -> str:
    """The matched route's full path template (``/v1/files/{file_id}``); the policy is keyed by it."""
    templates = getattr(request.app.state, "route_templates", {})  # endpoint function -> its full path
    return templates.get(request.scope.get("endpoint")) or request.url.path


def _project(request: Request, identity: dict) -> str:
    named = request.headers.get(PROJECT_HEADER, "").strip() or None
    if identity["instance_admin"]:
        project = named or DEFAULT_PROJECT
        from graftlm.keys.projects import project_exists

        if not project_exists(project):
            raise NotFound(f"no project {project!r} (the {PROJECT_HEADER} header)", param="OpenAI-Project")
        return project
    if named is not None and named != identity["project"]:
        raise Forbidden(f"this key belongs to project {identity['project']!r}, not {named!r}; send it without "
                        "the OpenAI-Project header or with its own project", param="OpenAI-Project",
                        code="wrong_project")
    return identity["project"]


async def require_key(request: Request) -> None:
    audit = request.state.audit = {"route": route_of(request)}
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>` "
                           "(the admin key is in GRAFT_HOME/admin.key)", code="missing_api_key")
    identity = key_identity(token.strip())
    if identity is None:
        raise Unauthorized("invalid or revoked API key", code="invalid_api_key")
    audit.update(key_id=identity["id"], role=identity["role"], project=identity["project"])
    if identity["expired"]:
        raise Unauthorized("this API key has expired; ask an admin of its project for a new one",
                           code="expired_api_key")
    project = _project(request, identity)
    audit["project"] = project
    needed = required_role(request.method, audit["route"])
    if not has_role(identity, needed):
        who = "the instance admin key" if needed == INSTANCE_ADMIN else f"a key with the {needed} role"
        raise Forbidden(f"{request.method} {audit['route']} needs {who}; this key's role is "
                        f"{identity['role']}{'' if identity['instance_admin'] else ' in project ' + repr(project)}",
                        code="permission_denied")
    path_project = request.scope.get("path_params", {}).get("project_id")
    if path_project is not None and not identity["instance_admin"] and path_project != project:
        raise NotFound(f"no project {path_project!r}", param="project_id")  # another project: not there
    request.state.key = identity | {"project": project}
    scope.set_project(project)
