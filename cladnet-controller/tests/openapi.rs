//! Checks the OpenAPI document served at `GET /openapi.json` (`src/openapi.json`): an OpenAPI
//! 3.0.3 document listing exactly the routes of `src/rest.rs` (with cb-network's path parameter
//! names), whose references resolve, whose operations are well formed, and whose schemas match
//! the proto3 JSON the API really speaks (checked against serialized `cladnet.v1` messages).

use std::collections::{BTreeMap, BTreeSet};

use cladnet_controller::{
    error::ControllerError,
    model::PeerState,
    routes::{ExitNodes, RouteApproval, RouteState},
    validate::COMMANDS,
};
use cladnet_core::policy::{Encryption, LinkMode, RuleType, Scope};
use cladnet_proto::v1 as pb;
use serde::Serialize;
use serde_json::Value;

const DOC: &str = include_str!("../src/openapi.json");
const REST_RS: &str = include_str!("../src/rest.rs");

/// Every REST route: method, path (cb-network parameter names), request body schema, 200 schema.
const ROUTES: &[(&str, &str, Option<&str>, Option<&str>)] = &[
    ("get", "/health", None, Some("HealthResponse")),
    ("get", "/openapi.json", None, None),
    ("get", "/v1/cladnet", None, Some("ListNetworksResponse")),
    ("post", "/v1/cladnet", Some("Network"), Some("Network")),
    (
        "post",
        "/v1/cladnet/availableIPv4AddressSpaces",
        Some("RecommendAddressSpaceRequest"),
        Some("RecommendAddressSpaceResponse"),
    ),
    ("get", "/v1/cladnet/{cladnetId}", None, Some("Network")),
    (
        "put",
        "/v1/cladnet/{cladnetId}",
        Some("Network"),
        Some("Network"),
    ),
    (
        "delete",
        "/v1/cladnet/{cladnetId}",
        None,
        Some("DeleteNetworkResponse"),
    ),
    (
        "get",
        "/v1/cladnet/{cladnetId}/peer",
        None,
        Some("ListPeersResponse"),
    ),
    (
        "get",
        "/v1/cladnet/{cladnetId}/peer/{hostId}",
        None,
        Some("Peer"),
    ),
    (
        "delete",
        "/v1/cladnet/{cladnetId}/peer/{hostId}",
        None,
        Some("DeletePeerResponse"),
    ),
    (
        "put",
        "/v1/cladnet/{cladnetId}/peer/{hostId}/details",
        Some("UpdatePeerDetailsRequest"),
        Some("Peer"),
    ),
    (
        "get",
        "/v1/cladnet/{cladnetId}/peer/{hostId}/networkingRule",
        None,
        Some("Peer"),
    ),
    (
        "get",
        "/v1/cladnet/{cladnetId}/peer/{hostId}/wireguardConfig",
        None,
        Some("ExternalPeerConfig"),
    ),
    (
        "post",
        "/v1/cladnet/{cladnetId}/externalPeer",
        Some("AddExternalPeerRequest"),
        Some("Peer"),
    ),
    (
        "get",
        "/v1/cladnet/{cladnetId}/route",
        None,
        Some("ListRoutesResponse"),
    ),
    (
        "post",
        "/v1/cladnet/{cladnetId}/route/approve",
        Some("RouteDecisionRequest"),
        Some("Route"),
    ),
    (
        "post",
        "/v1/cladnet/{cladnetId}/route/reject",
        Some("RouteDecisionRequest"),
        Some("Route"),
    ),
    (
        "get",
        "/v1/cladnet/{cladnetId}/stats",
        None,
        Some("NetworkStats"),
    ),
    (
        "get",
        "/v1/cladnet/{cladnetId}/token",
        None,
        Some("ListJoinTokensResponse"),
    ),
    (
        "post",
        "/v1/cladnet/{cladnetId}/token",
        Some("CreateJoinTokenRequest"),
        Some("CreateJoinTokenResponse"),
    ),
    (
        "delete",
        "/v1/cladnet/{cladnetId}/token/{tokenId}",
        None,
        Some("RevokeJoinTokenResponse"),
    ),
    (
        "post",
        "/v1/control/cladnet/{cladnetId}/command/{commandType}",
        None,
        Some("SendCommandResponse"),
    ),
    (
        "get",
        "/v1/control/cladnet/{cladnetId}/command/{commandType}",
        None,
        Some("SendCommandResponse"),
    ),
    (
        "post",
        "/v1/test/cladnet/{cladnetId}/type/{testType}",
        Some("StartConnectivityTestRequest"),
        Some("ConnectivityTest"),
    ),
    (
        "get",
        "/v1/test/cladnet/{cladnetId}/result/{testId}",
        None,
        Some("ConnectivityTest"),
    ),
    (
        "get",
        "/v1/test/cladnet/{cladnetId}/latest",
        None,
        Some("ConnectivityTest"),
    ),
];

/// Routes that need no credentials.
const PUBLIC: &[&str] = &["/health", "/openapi.json"];

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

const SCHEMAS: &[&str] = &[
    "Network",
    "ListNetworksResponse",
    "DeleteNetworkResponse",
    "Peer",
    "Link",
    "CloudInformation",
    "ListPeersResponse",
    "DeletePeerResponse",
    "UpdatePeerDetailsRequest",
    "AddExternalPeerRequest",
    "ExternalPeerConfig",
    "Route",
    "ListRoutesResponse",
    "RouteDecisionRequest",
    "RecommendAddressSpaceRequest",
    "RecommendAddressSpaceResponse",
    "SendCommandResponse",
    "StartConnectivityTestRequest",
    "ConnectivityTest",
    "PairResult",
    "PeerStats",
    "NodeStats",
    "NetworkStats",
    "CreateJoinTokenRequest",
    "CreateJoinTokenResponse",
    "JoinToken",
    "ListJoinTokensResponse",
    "RevokeJoinTokenResponse",
    "HealthResponse",
    "Error",
];

fn doc() -> Value {
    serde_json::from_str(DOC).expect("src/openapi.json is valid JSON")
}

/// Every operation: (method, path, operation object).
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, op) in item.as_object().expect("a path item is an object") {
            if HTTP_METHODS.contains(&method.as_str()) {
                ops.push((method.clone(), path.clone(), op));
            }
        }
    }
    ops
}

/// Follows a local `$ref` (one level of indirection is enough in this document).
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{r} is not local"));
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("{r} does not resolve"))
        }
        None => v,
    }
}

/// The component schema name a JSON body refers to, if it is a `$ref`.
fn body_schema(content_owner: &Value) -> Option<&str> {
    content_owner["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .map(|r| {
            r.strip_prefix("#/components/schemas/")
                .expect("a schema ref")
        })
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["components"]["schemas"]
        .get(name)
        .unwrap_or_else(|| panic!("components.schemas.{name} is missing"))
}

fn properties<'a>(doc: &'a Value, name: &str) -> &'a serde_json::Map<String, Value> {
    schema(doc, name)["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has no properties"))
}

fn enum_of(v: &Value) -> BTreeSet<String> {
    v["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no enum in {v}"))
        .iter()
        .map(|e| e.as_str().expect("string enum").to_owned())
        .collect()
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

#[test]
fn the_served_document_is_this_file() {
    assert_eq!(cladnet_controller::rest::OPENAPI, DOC);
}

#[test]
fn version_info_servers_and_security() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["info"]["title"], "CLADNet controller REST API");
    assert!(
        !doc["info"]["version"]
            .as_str()
            .expect("info.version")
            .is_empty()
    );
    let description = doc["info"]["description"]
        .as_str()
        .expect("info.description");
    for needle in ["cladnet.v1", "cb-network", "gRPC"] {
        assert!(
            description.contains(needle),
            "info.description mentions {needle}"
        );
    }
    assert_eq!(doc["servers"][0]["url"], "http://localhost:8053");

    let bearer = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(doc["security"], serde_json::json!([{ "bearerAuth": [] }]));
    for (method, path, op) in operations(&doc) {
        if PUBLIC.contains(&path.as_str()) {
            assert_eq!(
                op["security"],
                serde_json::json!([]),
                "{method} {path} needs no credentials"
            );
        } else {
            assert!(
                op.get("security").is_none(),
                "{method} {path} inherits the bearer requirement"
            );
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} documents 401"
            );
        }
    }
}

#[test]
fn paths_are_exactly_the_rest_routes() {
    let doc = doc();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(ROUTES.len(), expected.len(), "ROUTES has duplicates");
    let missing: Vec<_> = expected.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
}

#[test]
fn bodies_match_the_handlers() {
    let doc = doc();
    for &(method, path, request, response) in ROUTES {
        let op = &doc["paths"][path][method];
        let ok = op["responses"]
            .get("200")
            .unwrap_or_else(|| panic!("{method} {path} has no 200"));
        assert_eq!(
            body_schema(deref(&doc, ok)),
            response,
            "{method} {path} 200 body"
        );
        let req = op.get("requestBody").map(|b| deref(&doc, b));
        assert_eq!(
            req.and_then(body_schema),
            request,
            "{method} {path} request body"
        );
    }
}

/// Parses the `router` of `src/rest.rs`: (method, cb-network path) to the handler's reply
/// message, when the handler returns `Json<pb::Message>`.
fn rest_rs_routes() -> BTreeMap<(String, String), Option<String>> {
    let router_start = REST_RS
        .find("pub fn router(")
        .expect("rest.rs has `pub fn router(`");
    let mut rest = &REST_RS[router_start..];
    let mut routes = BTreeMap::new();
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route".len()..];
        let args = balanced(rest);
        rest = &rest[args.len()..];
        let open = args.find('"').expect("a route path literal");
        let close = open + 1 + args[open + 1..].find('"').expect("closing quote");
        let path = cb_path(&args[open + 1..close]);
        let mut found = false;
        for method in ["get", "post", "put", "delete", "patch"] {
            let call = format!("{method}(");
            for (at, _) in args.match_indices(&call) {
                let before = args[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let inner = balanced(&args[at + method.len()..]);
                let handler = inner[1..inner.len() - 1].trim();
                let reply = handler
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_')
                    .then(|| handler_reply(handler))
                    .flatten();
                let key = (method.to_owned(), path.clone());
                assert!(
                    routes.insert(key, reply).is_none(),
                    "{method} {path} routed twice"
                );
                found = true;
            }
        }
        assert!(found, "no method found in .route{args}");
    }
    assert!(!routes.is_empty(), "no routes parsed from rest.rs");
    routes
}

/// `s` starts with `(`: the text up to and including its matching `)`.
fn balanced(s: &str) -> &str {
    assert!(
        s.starts_with('('),
        "expected '(' at {:?}",
        &s[..s.len().min(40)]
    );
    let (mut depth, mut in_string) = (0usize, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return &s[..=i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in rest.rs")
}

/// An axum path with cb-network's parameter names, chosen by the segment before each one.
fn cb_path(axum_path: &str) -> String {
    let segments: Vec<&str> = axum_path.split('/').collect();
    let mut out = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        if seg.starts_with('{') {
            let name = match segments[i - 1] {
                "cladnet" => "{cladnetId}",
                "peer" => "{hostId}",
                "token" => "{tokenId}",
                "command" => "{commandType}",
                "type" => "{testType}",
                "result" => "{testId}",
                other => {
                    panic!("no cb-network name for the parameter after {other:?} in {axum_path}")
                }
            };
            out.push(name);
        } else {
            out.push(seg);
        }
    }
    out.join("/")
}

/// The message a handler replies with, from `-> Json<pb::Message>` in its signature.
fn handler_reply(handler: &str) -> Option<String> {
    let start = REST_RS
        .find(&format!("async fn {handler}("))
        .unwrap_or_else(|| panic!("handler {handler} not found in rest.rs"));
    let signature = &REST_RS[start..];
    let signature = &signature[..signature.find('{').expect("a function body")];
    let ret = signature.split("->").nth(1)?.trim();
    ret.strip_prefix("Json<pb::")
        .and_then(|r| r.strip_suffix('>'))
        .map(str::to_owned)
}

#[test]
fn routes_match_rest_rs() {
    let parsed = rest_rs_routes();
    let expected: BTreeMap<(String, String), Option<&str>> = ROUTES
        .iter()
        .map(|(m, p, _, r)| (((*m).to_owned(), (*p).to_owned()), *r))
        .collect();
    let parsed_keys: BTreeSet<_> = parsed.keys().collect();
    let expected_keys: BTreeSet<_> = expected.keys().collect();
    assert_eq!(
        parsed_keys, expected_keys,
        "rest.rs routes vs ROUTES (and so openapi.json)"
    );
    for (key, reply) in &parsed {
        if let Some(reply) = reply {
            assert_eq!(
                Some(reply.as_str()),
                expected[key],
                "{key:?} replies with {reply}"
            );
        }
    }
}

#[test]
fn path_parameters_are_declared() {
    let doc = doc();
    for (method, path, op) in operations(&doc) {
        let item = &doc["paths"][path.as_str()];
        let mut in_path = BTreeSet::new();
        for p in [&item["parameters"], &op["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
        {
            let p = deref(&doc, p);
            assert!(
                p["name"].is_string() && p["schema"].is_object(),
                "{method} {path}: {p}"
            );
            if p["in"] == "path" {
                assert_eq!(
                    p["required"], true,
                    "{method} {path}: path parameters are required"
                );
                in_path.insert(p["name"].as_str().expect("name").to_owned());
            }
        }
        let template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            in_path, template,
            "{method} {path}: declared path parameters"
        );
    }
    let command = &doc["paths"]["/v1/control/cladnet/{cladnetId}/command/{commandType}"];
    for method in ["get", "post"] {
        let host = command[method]["parameters"]
            .as_array()
            .expect("command parameters")
            .iter()
            .map(|p| deref(&doc, p))
            .find(|p| p["in"] == "query")
            .unwrap_or_else(|| panic!("{method} command has a query parameter"));
        assert_eq!(host["name"], "hostId");
        assert_eq!(host["required"], false);
    }
}

/// Every `$ref` string in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves_and_every_schema_is_used() {
    let doc = doc();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    let defined: BTreeSet<String> = doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
        .cloned()
        .collect();
    let mut used = BTreeSet::new();
    for r in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        if let Some(name) = r.strip_prefix("#/components/schemas/") {
            assert!(defined.contains(name), "{r}: no such component schema");
            used.insert(name.to_owned());
        } else {
            assert!(
                r.starts_with("#/components/parameters/")
                    || r.starts_with("#/components/responses/"),
                "{r} points outside components"
            );
        }
    }
    assert_eq!(
        defined,
        set(SCHEMAS.iter().copied()),
        "the component schemas"
    );
    assert_eq!(used, defined, "every component schema is referenced");
}

#[test]
fn operations_are_well_formed() {
    let doc = doc();
    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(
            !id.is_empty() && ids.insert(id.to_owned()),
            "operationId {id:?} is not unique"
        );
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path} has a summary"
        );
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|code| code.starts_with('2')),
            "{method} {path} has a 2xx response"
        );
        for (code, response) in responses {
            let response = deref(&doc, response);
            assert!(
                response["description"].is_string(),
                "{method} {path} {code}: description"
            );
            if code.starts_with('4') || code.starts_with('5') || code == "default" {
                if PUBLIC.contains(&path.as_str()) {
                    continue; // /health answers 503 with its HealthResponse
                }
                assert_eq!(
                    body_schema(response),
                    Some("Error"),
                    "{method} {path} {code}"
                );
            }
        }
        if !PUBLIC.contains(&path.as_str()) {
            for code in ["401", "403"] {
                assert!(
                    responses.contains_key(code),
                    "{method} {path} documents {code}"
                );
            }
        }
        if path.contains('{') {
            // Every route with a path parameter validates and looks it up.
            assert!(
                responses.contains_key("400"),
                "{method} {path} documents 400"
            );
            assert!(
                responses.contains_key("404"),
                "{method} {path} documents 404"
            );
        }
        if op.get("requestBody").is_some() {
            assert!(
                responses.contains_key("400"),
                "{method} {path}: a body can be invalid"
            );
        }
    }
    assert_eq!(ids.len(), ROUTES.len());
}

#[test]
fn cb_network_json_names_are_properties() {
    let doc = doc();
    let mut all = BTreeSet::new();
    for (_, s) in doc["components"]["schemas"].as_object().expect("schemas") {
        if let Some(props) = s["properties"].as_object() {
            all.extend(props.keys().cloned());
        }
    }
    for name in [
        "recommendedIpv4PrivateAddressSpace",
        "addressSpace10s",
        "addressSpace172s",
        "addressSpace192s",
        "cladnetSpecifications",
        "ipv4AddressSpace",
    ] {
        assert!(all.contains(name), "{name} is a property");
    }
    let recommended = properties(&doc, "RecommendAddressSpaceResponse");
    for name in [
        "recommendedIpv4PrivateAddressSpace",
        "addressSpace10s",
        "addressSpace172s",
        "addressSpace192s",
    ] {
        assert!(
            recommended.contains_key(name),
            "RecommendAddressSpaceResponse.{name}"
        );
    }
    assert!(properties(&doc, "ListNetworksResponse").contains_key("cladnetSpecifications"));
    assert!(properties(&doc, "Network").contains_key("ipv4AddressSpace"));
    assert!(properties(&doc, "Network").contains_key("cladnetId"));
    assert_eq!(
        set(properties(&doc, "UpdatePeerDetailsRequest")
            .keys()
            .map(String::as_str)),
        set(["cloudInformation"]),
        "UpdatePeerDetails body: the ids come from the path"
    );
}

fn all_peer_states() -> Vec<&'static str> {
    let states = [
        PeerState::Joining,
        PeerState::Up,
        PeerState::Down,
        PeerState::Released,
        PeerState::Failed,
    ];
    // Exhaustive: a new state fails to compile here until it is listed above.
    states
        .iter()
        .map(|s| match s {
            PeerState::Joining
            | PeerState::Up
            | PeerState::Down
            | PeerState::Released
            | PeerState::Failed => s.as_str(),
        })
        .collect()
}

#[test]
fn enums_match_the_code() {
    let doc = doc();
    let network = properties(&doc, "Network");
    let rule_types = "?"
        .parse::<RuleType>()
        .expect_err("not a rule type")
        .allowed;
    assert_eq!(
        enum_of(&network["ruleType"]),
        set(rule_types.split_whitespace())
    );
    assert_eq!(
        enum_of(&network["ruleType"]),
        set(["basic", "cost-prioritized"])
    );
    let encryptions = "?"
        .parse::<Encryption>()
        .expect_err("not an encryption")
        .allowed;
    assert_eq!(
        enum_of(&network["encryption"]),
        set(encryptions.split_whitespace())
    );
    assert_eq!(
        enum_of(&network["encryption"]),
        set(["always", "inter-site", "never"])
    );

    let states = set(all_peer_states());
    assert_eq!(enum_of(&properties(&doc, "Peer")["state"]), states);
    let link = properties(&doc, "Link");
    assert_eq!(enum_of(&link["state"]), states);
    let modes = [LinkMode::Plain, LinkMode::Sealed].map(|m| match m {
        LinkMode::Plain | LinkMode::Sealed => m.as_str(),
    });
    assert_eq!(enum_of(&link["mode"]), set(modes));
    assert_eq!(
        enum_of(&properties(&doc, "PeerStats")["mode"]),
        set(modes),
        "agents report the modes links have"
    );
    let scopes = [Scope::Intra, Scope::Inter].map(|s| match s {
        Scope::Intra | Scope::Inter => s.as_str(),
    });
    assert_eq!(enum_of(&link["peerScope"]), set(scopes));

    let allowed = |e: cladnet_core::policy::PolicyParseError| set(e.allowed.split_whitespace());
    assert_eq!(
        enum_of(&network["routeApproval"]),
        allowed("?".parse::<RouteApproval>().expect_err("not an approval"))
    );
    assert_eq!(
        enum_of(&network["exitNodes"]),
        allowed("?".parse::<ExitNodes>().expect_err("not a setting"))
    );
    assert_eq!(
        enum_of(&properties(&doc, "Route")["state"]),
        allowed("?".parse::<RouteState>().expect_err("not a state"))
    );

    let command = deref(&doc, &doc["components"]["parameters"]["commandType"]);
    assert_eq!(command["name"], "commandType");
    assert_eq!(enum_of(&command["schema"]), set(COMMANDS));
}

/// Checks `value` against `schema`; with `complete`, every declared property must be present
/// (so the sample exercises the whole schema and the schema declares nothing the API lacks).
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = deref(doc, schema);
    if let Some(all_of) = schema["allOf"].as_array() {
        for s in all_of {
            check(doc, s, value, at);
        }
        return;
    }
    let ty = schema["type"]
        .as_str()
        .unwrap_or_else(|| panic!("{at}: schema without type"));
    match ty {
        "string" => {
            let s = value
                .as_str()
                .unwrap_or_else(|| panic!("{at}: {value} is not a string"));
            if let Some(allowed) = schema["enum"].as_array() {
                assert!(
                    allowed.contains(value),
                    "{at}: {value} is not in {allowed:?}"
                );
            }
            match schema["format"].as_str() {
                Some("int64") => assert!(s.parse::<i64>().is_ok(), "{at}: {s:?} is not an int64"),
                Some("uint64") => assert!(s.parse::<u64>().is_ok(), "{at}: {s:?} is not a uint64"),
                _ => {}
            }
        }
        "integer" => {
            let n = value
                .as_i64()
                .unwrap_or_else(|| panic!("{at}: {value} is not an integer"));
            if let Some(min) = schema["minimum"].as_i64() {
                assert!(n >= min, "{at}: {n} < {min}");
            }
            if let Some(max) = schema["maximum"].as_i64() {
                assert!(n <= max, "{at}: {n} > {max}");
            }
        }
        "number" => assert!(value.is_number(), "{at}: {value} is not a number"),
        "boolean" => assert!(value.is_boolean(), "{at}: {value} is not a boolean"),
        "array" => {
            let items = value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: {value} is not an array"));
            assert!(!items.is_empty(), "{at}: the sample should fill every list");
            for (i, item) in items.iter().enumerate() {
                check(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        "object" => {
            let fields = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: {value} is not an object"));
            let props = schema["properties"]
                .as_object()
                .expect("object schemas list properties");
            let declared = set(props.keys().map(String::as_str));
            let present = set(fields.keys().map(String::as_str));
            assert_eq!(
                present, declared,
                "{at}: serialized fields vs schema properties"
            );
            for (k, v) in fields {
                check(doc, &props[k], v, &format!("{at}.{k}"));
            }
        }
        other => panic!("{at}: unexpected type {other}"),
    }
}

fn check_message<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    doc: &Value,
    name: &str,
    message: &T,
) {
    let value = serde_json::to_value(message).expect("serializes");
    check(doc, schema(doc, name), &value, name);
    let back: T = serde_json::from_value(value).expect("the proto3 JSON reads back");
    assert_eq!(&back, message, "{name} round-trips");
}

fn network() -> pb::Network {
    pb::Network {
        cladnet_id: "aws-gcp-1".into(),
        name: "demo".into(),
        ipv4_address_space: "10.77.0.0/24".into(),
        description: "a network".into(),
        rule_type: "cost-prioritized".into(),
        encryption: "inter-site".into(),
        revision: 42,
        route_approval: "manual".into(),
        exit_nodes: "allow".into(),
    }
}

fn cloud() -> pb::CloudInformation {
    pb::CloudInformation {
        provider_name: "aws".into(),
        region_id: "ap-northeast-2".into(),
        availability_zone_id: "ap-northeast-2a".into(),
        virtual_network_id: "vpc-1".into(),
        subnet_id: "subnet-1".into(),
    }
}

fn peer() -> pb::Peer {
    pb::Peer {
        cladnet_id: "aws-gcp-1".into(),
        host_id: "node-a".into(),
        host_name: "host-a".into(),
        host_private_ipv4_cidr: "192.168.1.10/24".into(),
        host_private_ip: "192.168.1.10".into(),
        host_public_ip: "203.0.113.7".into(),
        ipv4_cidr: "10.77.0.0/24".into(),
        ip: "10.77.0.2".into(),
        state: "up".into(),
        details: Some(cloud()),
        public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        public_endpoint: "203.0.113.7:8055".into(),
        private_endpoint: "192.168.1.10:8055".into(),
        capabilities: vec!["xdp-generic".into(), "userspace".into()],
        dataplane: "userspace".into(),
        dataplane_reason: "no XDP".into(),
        links: vec![pb::Link {
            host_id: "node-b".into(),
            host_name: "host-b".into(),
            peer_ip: "10.77.0.3".into(),
            selected_endpoint: "198.51.100.9:8055".into(),
            mode: "sealed".into(),
            peer_scope: "inter".into(),
            state: "joining".into(),
            path_mtu: 1400,
            path: "relay".into(),
            via: "node-c".into(),
        }],
        revision: 7,
        node_index: 4_000_000_000,
        external: true,
        routes: vec![route()],
    }
}

fn route() -> pb::Route {
    pb::Route {
        host_id: "node-a".into(),
        prefix: "10.244.3.0/24".into(),
        state: "approved".into(),
        advertised_at: 1_700_000_000,
        decided_at: 1_700_000_060,
    }
}

fn pair() -> pb::PairResult {
    pb::PairResult {
        source_host_id: "node-a".into(),
        source_ip: "10.77.0.2".into(),
        destination_host_id: "node-b".into(),
        destination_ip: "10.77.0.3".into(),
        min_rtt_ms: 0.5,
        avg_rtt_ms: 0.75,
        max_rtt_ms: 1.25,
        stddev_rtt_ms: 0.125,
        packets_sent: 3,
        packets_received: 2,
        packet_loss: 0.25,
    }
}

fn peer_stats() -> pb::PeerStats {
    pb::PeerStats {
        host_id: "node-b".into(),
        mode: "sealed".into(),
        endpoint: "198.51.100.9:8055".into(),
        tx_bytes: 5_000_000_000,
        rx_bytes: 1_234_567,
        tx_packets: 4_000_000,
        rx_packets: 1_000,
        handshake_age_seconds: 12,
        last_rx_age_seconds: -1,
        path_mtu: 1400,
        path: "relay".into(),
        via: "node-c".into(),
    }
}

fn join_token() -> pb::JoinToken {
    pb::JoinToken {
        token_id: "t1".into(),
        cladnet_id: "aws-gcp-1".into(),
        description: "ci".into(),
        created_at: 1_700_000_000,
        expires_at: 1_700_003_600,
        max_uses: 1,
        uses: 1,
    }
}

#[test]
fn schemas_match_the_proto_json() {
    let doc = doc();
    let d = &doc;
    check_message(d, "Network", &network());
    check_message(
        d,
        "ListNetworksResponse",
        &pb::ListNetworksResponse {
            cladnet_specifications: vec![network()],
        },
    );
    check_message(
        d,
        "DeleteNetworkResponse",
        &pb::DeleteNetworkResponse {
            is_succeeded: true,
            message: "deleted".into(),
            cladnet_specification: Some(network()),
        },
    );
    check_message(d, "CloudInformation", &cloud());
    check_message(d, "Peer", &peer());
    check_message(d, "Link", &peer().links[0]);
    check_message(
        d,
        "ListPeersResponse",
        &pb::ListPeersResponse {
            peers: vec![peer()],
        },
    );
    check_message(
        d,
        "DeletePeerResponse",
        &pb::DeletePeerResponse {
            is_succeeded: true,
            message: "freed".into(),
        },
    );
    check_message(
        d,
        "UpdatePeerDetailsRequest",
        &pb::UpdatePeerDetailsRequest {
            // Both come from the path, so the body leaves them out.
            cladnet_id: String::new(),
            host_id: String::new(),
            cloud_information: Some(cloud()),
        },
    );
    check_message(
        d,
        "AddExternalPeerRequest",
        &pb::AddExternalPeerRequest {
            cladnet_id: String::new(), // from the path
            name: "laptop".into(),
            public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            endpoint: "198.51.100.20:51820".into(),
            ip: "10.77.0.50".into(),
        },
    );
    check_message(d, "Route", &route());
    check_message(
        d,
        "ListRoutesResponse",
        &pb::ListRoutesResponse {
            routes: vec![route()],
        },
    );
    check_message(
        d,
        "RouteDecisionRequest",
        &pb::RouteDecisionRequest {
            cladnet_id: String::new(), // from the path
            host_id: "node-a".into(),
            prefix: "10.244.3.0/24".into(),
        },
    );
    check_message(
        d,
        "ExternalPeerConfig",
        &pb::ExternalPeerConfig {
            config: "[Interface]\nAddress = 10.77.0.50/24\n".into(),
        },
    );
    check_message(
        d,
        "RecommendAddressSpaceRequest",
        &pb::RecommendAddressSpaceRequest {
            ipv4_cidrs: vec!["192.168.1.10/24".into()],
            hosts: 30,
            cladnet_id: "aws-gcp-1".into(),
        },
    );
    check_message(
        d,
        "RecommendAddressSpaceResponse",
        &pb::RecommendAddressSpaceResponse {
            recommended_ipv4_private_address_space: "10.0.0.0/26".into(),
            address_space10s: vec!["10.0.0.0/26".into()],
            address_space172s: vec!["172.16.0.0/26".into()],
            address_space192s: vec!["192.168.0.0/26".into()],
        },
    );
    check_message(
        d,
        "SendCommandResponse",
        &pb::SendCommandResponse {
            is_succeeded: true,
            message: "down sent to 1 peer(s)".into(),
            host_ids: vec!["node-a".into()],
        },
    );
    check_message(
        d,
        "StartConnectivityTestRequest",
        &pb::StartConnectivityTestRequest {
            cladnet_id: String::new(), // from the path
            trial_count: 5,
        },
    );
    check_message(d, "PairResult", &pair());
    check_message(d, "PeerStats", &peer_stats());
    let node_stats = pb::NodeStats {
        host_id: "node-a".into(),
        reported_at: 1_700_000_000,
        peers: vec![peer_stats()],
    };
    check_message(d, "NodeStats", &node_stats);
    check_message(
        d,
        "NetworkStats",
        &pb::NetworkStats {
            cladnet_id: "aws-gcp-1".into(),
            nodes: vec![node_stats],
        },
    );
    check_message(
        d,
        "ConnectivityTest",
        &pb::ConnectivityTest {
            cladnet_id: "aws-gcp-1".into(),
            test_id: "abc123".into(),
            trial_count: 3,
            host_ids: vec!["node-a".into(), "node-b".into()],
            reported_host_ids: vec!["node-a".into()],
            results: vec![pair()],
            complete: true,
        },
    );
    check_message(
        d,
        "CreateJoinTokenRequest",
        &pb::CreateJoinTokenRequest {
            cladnet_id: String::new(), // from the path
            description: "ci".into(),
            ttl_seconds: 3600,
            max_uses: 1,
        },
    );
    check_message(d, "JoinToken", &join_token());
    check_message(
        d,
        "CreateJoinTokenResponse",
        &pb::CreateJoinTokenResponse {
            info: Some(join_token()),
            token: "cnj.t1.secret".into(),
            controller_pin: "sha256:00".into(),
        },
    );
    check_message(
        d,
        "ListJoinTokensResponse",
        &pb::ListJoinTokensResponse {
            tokens: vec![join_token()],
        },
    );
    check_message(
        d,
        "RevokeJoinTokenResponse",
        &pb::RevokeJoinTokenResponse { is_succeeded: true },
    );
    check_message(
        d,
        "HealthResponse",
        &pb::HealthResponse {
            status: "unhealthy".into(),
            store: "unreachable".into(),
            revision: 9,
            message: "connection refused".into(),
        },
    );
}

#[test]
fn error_schema_matches_the_error_bodies() {
    let doc = doc();
    let errors = [
        ControllerError::invalid("ipv4AddressSpace", "not private"),
        ControllerError::not_found("network \"x\""),
        ControllerError::AlreadyExists {
            what: "network \"x\"".into(),
        },
        ControllerError::FailedPrecondition("no room".into()),
        ControllerError::Aborted("retry".into()),
        ControllerError::Unauthenticated("no token".into()),
        ControllerError::PermissionDenied("agent token".into()),
        ControllerError::Corrupt {
            key: "k".into(),
            reason: "bad".into(),
        },
    ];
    for e in &errors {
        // The body rest.rs writes for an error.
        let body =
            serde_json::json!({ "code": format!("{:?}", e.code()), "message": e.to_string() });
        check(&doc, schema(&doc, "Error"), &body, "Error");
        let status = e.http_status().to_string();
        let documented = operations(&doc)
            .iter()
            .any(|(_, _, op)| op["responses"].get(&status).is_some());
        assert!(
            documented || status == "500",
            "HTTP {status} ({:?}) is documented somewhere",
            e.code()
        );
    }
    let message = ControllerError::invalid("cladnetId", "too long").to_string();
    assert!(message.starts_with("cladnetId: "), "{message}");
}
