//! `lmictl bench --via http`: the load generator of the HTTP Invoke API against a real agent and a real
//! native echo runtime (loopback only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmictl_bench_via_http_counts_every_invoke_and_the_agents_costs() {
    require_root!();
    let code = native_echo_code_dir();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: "[invoke_api]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    })
    .await;
    let addr = agent.invoke_api_addr().to_string();
    let env = agent
        .create_ready(native_echo_spec("bench-http", code.path(), 4, 60))
        .await;
    let lmictl = |args: &[&str]| lmictl_json(&agent.socket, args);
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "invoke",
            "bench-http",
            "--via",
            "http",
            "--invoke-api",
            &addr,
            "-d",
            "60",
            "--warmup",
            "0",
        ];
        args.extend_from_slice(extra);
        let (ok, r, stderr) = lmictl(&args);
        assert!(ok, "lmictl {args:?}: {stderr}");
        r
    };

    // Closed loop, bounded by count: exactly 200 measured invokes, all answered by the echo over HTTP.
    let r = bench(&["-c", "4", "-n", "200"]);
    assert_eq!(r["transport"], "http", "{r:#}");
    assert_eq!(r["invokes"], 200, "{r:#}");
    assert_eq!(r["outcomes"]["success"], 200, "{r:#}");
    for other in [
        "function_error",
        "timeout",
        "runtime_failure",
        "throttle",
        "other",
    ] {
        assert_eq!(r["outcomes"][other], 0, "{other}: {r:#}");
    }
    assert_eq!(r["first_error"], serde_json::Value::Null, "{r:#}");
    // The agent was found through the gRPC socket's peer, its costs and lmictl's own read from /proc.
    assert_eq!(r["agent"]["pid"], agent.pid(), "{r:#}");
    assert!(r["agent"]["cpu_us_per_invoke"].is_number(), "{r:#}");
    assert!(r["agent"]["peak_rss_mib"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(r["lmictl_cpu_us_per_invoke"].is_number(), "{r:#}");
    assert_eq!(r["runtime_pids"], serde_json::json!([env.pid]), "{r:#}");

    // A function error is 200 with X-Amz-Function-Error: counted as a function error, not a success.
    let r = bench(&[
        "-n",
        "3",
        "--payload",
        r#"{"native_echo": {"error": "Function.Asked"}}"#,
    ]);
    assert_eq!(r["outcomes"]["function_error"], 3, "{r:#}");
    assert_eq!(r["outcomes"]["success"], 0, "{r:#}");

    // An explicit qualifier travels in the path (FunctionName:$LATEST, percent-encoded).
    let r = bench(&["-n", "5", "--version", "$LATEST"]);
    assert_eq!(r["outcomes"]["success"], 5, "{r:#}");

    // Open loop over a pool of connections.
    let r = bench(&["--rate", "200", "-n", "50"]);
    assert_eq!(r["mode"], "rate", "{r:#}");
    assert_eq!(
        r["outcomes"]["success"].as_u64().unwrap() + r["outcomes"]["skipped"].as_u64().unwrap(),
        50,
        "{r:#}"
    );
    assert_eq!(r["outcomes"]["other"], 0, "{r:#}");

    // Misuse is refused before any load: no address, or one off this host.
    let (ok, _, stderr) = lmictl(&["bench", "invoke", "bench-http", "--via", "http"]);
    assert!(!ok && stderr.contains("--invoke-api"), "{stderr}");
    let (ok, _, stderr) = lmictl(&[
        "bench",
        "invoke",
        "bench-http",
        "--via",
        "http",
        "--invoke-api",
        "10.1.2.3:9001",
    ]);
    assert!(!ok && stderr.contains("loopback"), "{stderr}");

    agent.stop_and_assert_clean(&[env.pid]);
}
