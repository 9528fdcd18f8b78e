//! The admin API described as OpenAPI 3 (`GET /admin/v1/openapi.json`),
//! made from the same kinds the router serves, so the two cannot drift
//! (a test walks every path against a running gateway).

use serde_json::{json, Map, Value};

use crate::source::document::Kind;

fn error() -> Value {
    json!({ "description": "an error: {\"error\", \"fields\": [{\"path\", \"message\"}]}",
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn body() -> Value {
    json!({ "required": true, "content": {
        "application/json": { "schema": { "type": "object" } },
        "application/yaml": { "schema": { "type": "object" } } } })
}

fn params(names: &[(&str, &str)]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|(n, place)| json!({ "name": n, "in": place, "required": *place == "path", "schema": { "type": "string" } }))
            .collect(),
    )
}

/// The operations on one resource (`with_id`: `/<kind>/{id}`).
fn item(kind: Kind, with_id: bool) -> Value {
    let path_params: &[(&str, &str)] = if with_id { &[("id", "path")] } else { &[] };
    let write_params: Vec<(&str, &str)> = path_params
        .iter()
        .copied()
        .chain([
            ("If-Match", "header"),
            ("dry_run", "query"),
            ("force", "query"),
        ])
        .collect();
    let name = kind.name();
    json!({
        "get": { "summary": format!("read a {name} (secrets redacted); ETag = mod_revision"), "parameters": params(path_params),
                 "responses": { "200": { "description": "the value" }, "404": error() } },
        "put": { "summary": format!("create or replace a {name}, validated as the gateways will"), "parameters": params(&write_params),
                 "requestBody": body(),
                 "responses": { "200": { "description": "replaced" }, "201": { "description": "created" },
                                "400": error(), "412": error(), "413": error(), "503": error() } },
        "patch": { "summary": format!("JSON merge patch (RFC 7396) of a {name}"), "parameters": params(&write_params),
                   "requestBody": body(),
                   "responses": { "200": { "description": "patched" }, "400": error(), "404": error(), "412": error() } },
        "delete": { "summary": format!("delete a {name}"), "parameters": params(&write_params),
                    "responses": { "200": { "description": "deleted" }, "404": error(), "409": error(), "412": error() } },
    })
}

/// Every path the API serves, and how.
pub fn document() -> Value {
    let mut paths = Map::new();
    for kind in Kind::ALL {
        let folder = kind.folder();
        if kind == Kind::Settings {
            paths.insert(format!("/admin/v1/{folder}"), item(kind, false));
            continue;
        }
        paths.insert(
            format!("/admin/v1/{folder}"),
            json!({ "get": { "summary": format!("list {folder}, a page at a time"),
                             "parameters": params(&[("prefix", "query"), ("after", "query"), ("limit", "query")]),
                             "responses": { "200": { "description": "{items: [{id, revision, value}], next}" } } } }),
        );
        paths.insert(format!("/admin/v1/{folder}/{{id}}"), item(kind, true));
    }
    paths.insert(
        "/admin/v1/gateways".into(),
        json!({ "get": { "summary": "every live gateway node, its applied revision and lag",
                         "responses": { "200": { "description": "{config_revision, etcd_revision, applies_under_way, gateways: [{node_id, version, config_revision, lag, up_to_date, state: up_to_date|behind|holding|stale}], held_by: {<lock or election>: <node>}}" } } } }),
    );
    paths.insert(
        "/admin/v1/purge".into(),
        json!({ "post": { "summary": "purge cached answers on every node: {route, key | prefix | tag}",
                          "responses": { "202": { "description": "{id, revision, purge}: written; nodes apply it from their watch" },
                                         "400": { "description": "malformed, unknown route, or a route that caches nothing" } } } }),
    );
    paths.insert(
        "/admin/v1/openapi.json".into(),
        json!({ "get": { "summary": "this document", "responses": { "200": { "description": "OpenAPI 3" } } } }),
    );
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Tollgate admin API", "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "securitySchemes": { "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" } },
            "schemas": { "Error": { "type": "object", "properties": {
                "error": { "type": "string" },
                "fields": { "type": "array", "items": { "type": "object", "properties": {
                    "path": { "type": "string" }, "message": { "type": "string" } } } } } } },
        },
        "security": [{ "apiKey": [] }],
        "paths": paths,
    })
}
