"""``/openapi.json`` (OpenAPI 3.1) built from the route table, and ``/docs``, a page made from it.

The document is generated, never written by hand: paths, methods, query parameters and scopes
come from the ``Operation`` s the server routes with, and the schemas from the msgspec types in
``schemas.py`` (``msgspec.json.schema_components``). ``/docs`` renders the same document as
plain HTML on the server: no script, no CDN, nothing to vendor.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from tidings import __version__
from tidings.server.operations import Operation
from tidings.server.schemas import Problem

__all__ = ["docs_page", "document"]

_REF = "#/components/schemas/{name}"
_ERRORS = {
    400: "The input is wrong: `field` names it",
    401: "No key, or a wrong one",
    403: "The key lacks the scope",
    404: "Not found",
    409: "Conflicts with what is stored",
    413: "The body is too large",
    415: "The body is not declared JSON",
    422: "A value breaks a rule: `field` names it",
    500: "Unexpected; the server log has the details",
    503: "The store or the webhook queue cannot take it now",
}
_PATH_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


def _path(path: str) -> str:
    return _PATH_PARAM.sub(r"{\1}", path)


def document(operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``."""
    types: list[Any] = [Problem]
    for op in operations:
        for t in (op.body, op.answer):
            if t is not None and t not in types:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    problem = {PROBLEM: {"schema": by_type[Problem]}}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
        }
        if op.description:
            item["description"] = op.description
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(op.path)
        ]
        params += [p.openapi() for p in op.query]
        if params:
            item["parameters"] = params
        if op.body is not None:
            schema = by_type[op.body]
            item["requestBody"] = {
                "required": True,
                "content": {t: {"schema": schema} for t in op.body_types},
            }
        answer: dict[str, Any] = {"description": "OK" if op.ok < 300 else "Accepted"}
        if op.ok == 204:
            answer["description"] = "Done; no body"
        elif op.answer is not None:
            answer["content"] = {op.answer_type: {"schema": by_type[op.answer]}}
        elif op.answer_type != "application/json":
            answer["content"] = {op.answer_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(op.ok): answer}
        statuses = {400, 500, *op.errors}
        if op.scope is not None:
            statuses |= {401, 403}
            item["security"] = [{"apiKey": []}, {"bearer": []}]
            item["x-scope"] = op.scope
        else:
            item["security"] = []
        for status in sorted(statuses):
            responses[str(status)] = {
                "description": _ERRORS.get(status, "Error"),
                "content": problem,
            }
        item["responses"] = responses
        item.update(op.extra)
        paths.setdefault(_path(op.path), {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tidings",
            "version": __version__,
            "description": (
                "The HTTP API of `tidings serve`: events in and out, streams, subscriptions, "
                "webhook endpoints, deliveries and the DLQ, replays, API keys. Errors are RFC "
                "9457 problem details; lists are paged with `cursor` (`next_cursor`); a query "
                "parameter a route does not take is a 400. Scopes: read, publish, admin."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


PROBLEM = "application/problem+json"

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:1rem 2rem;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;margin-top:2rem}
details{border:1px solid #ddd;border-radius:6px;margin:.4rem 0;padding:.3rem .7rem}
summary{cursor:pointer}code,pre{font:13px ui-monospace,monospace}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;max-height:24rem}
.m{display:inline-block;min-width:4.5rem;font-weight:bold}.GET{color:#1a7f37}.POST{color:#0969da}
.PATCH{color:#9a6700}.DELETE{color:#cf222e}.s{color:#666;font-size:13px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def docs_page(doc: dict[str, Any]) -> str:
    """``doc`` as one self-contained HTML page (operations by tag, parameters, schemas)."""
    info = doc["info"]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            by_tag.setdefault(op["tags"][0], []).append((method.upper(), path, op))
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(info['title'])} API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(info['title'])} API <span class=s>{_e(info['version'])}</span></h1>",
        f"<p>{_e(info['description'])}</p>",
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>',
    ]
    for tag, ops in by_tag.items():
        out.append(f"<h2>{_e(tag)}</h2>")
        for method, path, op in ops:
            scope = op.get("x-scope")
            out.append(
                f"<details id={_e(op['operationId'])}><summary><span class='m {method}'>"
                f"{method}</span> <code>{_e(path)}</code> — {_e(op['summary'])}"
                + (f" <span class=s>scope {_e(scope)}</span>" if scope else "")
                + "</summary>"
            )
            if op.get("description"):
                out.append(f"<p>{_e(op['description'])}</p>")
            if op.get("parameters"):
                out.append("<table><tr><th>parameter</th><th>in</th><th>what</th></tr>")
                for p in op["parameters"]:
                    out.append(
                        f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
                        f"<td>{_e(p.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            if "requestBody" in op:
                content = op["requestBody"]["content"]
                out.append(f"<p>Body ({_e(', '.join(content))}):</p>")
                schema = next(iter(content.values()))["schema"]
                out.append(f"<pre>{_e(json.dumps(schema, indent=2))}</pre>")
            statuses = ", ".join(op["responses"])
            out.append(f"<p class=s>Answers: {_e(statuses)}</p></details>")
    out.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        out.append(
            f"<details id=schema-{_e(name)}><summary><code>{_e(name)}</code></summary>"
            f"<pre>{_e(json.dumps(schema, indent=2))}</pre></details>"
        )
    out.append("</body></html>")
    return "\n".join(out)
