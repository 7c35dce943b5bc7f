"""The OpenAPI schema as the server behaves: invalid requests are 400 in the OpenAI error shape (FastAPI's
generated schema says 422 with its own body), and every route may answer that error shape."""

from __future__ import annotations

ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}


def install_openapi(app) -> None:
    """``app.openapi()`` returns the generated schema with 422 replaced by the 400 the server sends."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = with_400s(generate())
        return app.openapi_schema

    app.openapi = openapi


def with_400s(schema: dict) -> dict:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses.setdefault("400", {"description": "Invalid request: the error names the param", **error})
    return schema
