//! `annals projections ...` through the real binary against a running server: status,
//! parked events, retry, skip and rewind, and clear failures.

mod common;

use std::process::{Command, Output};

use annals::server::ServerConfig;
use annals::server::auth::{ApiKeys, Role, generate_key};
use common::{TestServer, park_a_ghost_confirmation};

fn annals(server: &TestServer, key: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .arg("projections")
        .args(["--url", &server.url("")])
        .args(["--api-key", key])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_retries_skips_and_rewinds_from_the_command_line() {
    let (writer, w) = generate_key(Role::Writer).unwrap();
    let (admin, a) = generate_key(Role::Admin).unwrap();
    let server = TestServer::start(ServerConfig {
        api_keys: ApiKeys::parse(&format!("{w}\n{a}\n")).unwrap(),
        ..ServerConfig::default()
    })
    .await;
    // An event the orders projection cannot apply: it is parked.
    let position = park_a_ghost_confirmation(&server, &admin)
        .await
        .as_str()
        .unwrap()
        .to_string();

    let status = stdout(&annals(&server, &admin, &["status"]));
    assert!(
        status.contains("orders") && status.contains("products"),
        "{status}"
    );
    let parked = stdout(&annals(&server, &admin, &["parked", "orders"]));
    assert!(
        parked.starts_with(&format!("{position} order-ghost OrderConfirmed attempts=")),
        "{parked}"
    );
    let json_out = stdout(&annals(&server, &admin, &["--json", "parked", "orders"]));
    let value: serde_json::Value = serde_json::from_str(json_out.trim()).unwrap();
    assert_eq!(value["parkedEvents"][0]["position"], position.as_str());

    let retried = stdout(&annals(&server, &admin, &["retry", "orders", &position]));
    assert!(retried.contains("stays parked"), "{retried}");
    let skipped = stdout(&annals(&server, &admin, &["skip", "orders", &position]));
    assert!(skipped.contains("is skipped"), "{skipped}");
    let none = stdout(&annals(&server, &admin, &["parked", "orders"]));
    assert_eq!(none, "orders: no parked events\n");

    // Refusals: the code and message on stderr, a failing exit status.
    let again = annals(&server, &admin, &["skip", "orders", &position]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("[NOT_FOUND]"), "{stderr}");
    let forbidden = annals(&server, &writer, &["rewind", "orders", "1"]);
    assert!(!forbidden.status.success());
    assert!(String::from_utf8_lossy(&forbidden.stderr).contains("[FORBIDDEN]"));

    let rewound = stdout(&annals(&server, &admin, &["rewind", "orders", "1"]));
    assert_eq!(rewound, "orders: rewound to position 1\n");

    // A server that is not there.
    let nowhere = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["projections", "--url", "http://127.0.0.1:9", "status"])
        .output()
        .unwrap();
    assert!(!nowhere.status.success());
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("cannot reach"));
}
