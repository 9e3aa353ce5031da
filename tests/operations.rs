//! Operations endpoints: liveness, readiness and the OpenAPI document, all without a key.

mod common;

use common::{Backend, TestDatabase, TestServer, config_for, get};

const AUTH_ON: &str = "[auth]\nenabled = true\n[[auth.keys]]\nkey = \"k\"\nclient_account_id = \"a\"\nengagement_id = \"e\"\n";

async fn operations_endpoints_answer_without_a_key(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, AUTH_ON));
    assert_eq!(get(&server, "/healthz").await.status, 200);
    let ready = get(&server, "/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["database"], "ok");
    let doc = get(&server, "/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let routes = [
        ("/v1/flows", "post"),
        ("/v1/flows", "get"),
        ("/v1/flows/{id}", "get"),
        ("/v1/flows/{id}/pause", "post"),
        ("/v1/flows/{id}/resume", "post"),
        ("/v1/flows/{id}/cancel", "post"),
        ("/v1/flows/{id}/retry", "post"),
        ("/v1/flows/{id}/events", "get"),
        ("/v1/flows/{id}/failures", "get"),
        ("/v1/flows/{id}/ws", "get"),
        ("/v1/events/ws", "get"),
        ("/v1/flow-types", "get"),
        ("/v1/flow-types/{name}", "get"),
        ("/v1/flow-types/{name}", "put"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
    ];
    for (path, method) in routes {
        assert!(
            doc.body["paths"][path][method].is_object(),
            "OpenAPI lacks {method} {path}"
        );
    }
    let flow = &doc.body["components"]["schemas"]["FlowState"]["properties"];
    for field in [
        "progress_percentage",
        "next_phase",
        "master_flow_id",
        "parent_flow_id",
    ] {
        assert!(flow[field].is_object(), "FlowState schema lacks {field}");
    }
    assert_eq!(
        get(&server, "/v1/flows").await.status,
        401,
        "while /v1 needs the key"
    );
}

on_both_backends!(operations_endpoints_answer_without_a_key);
