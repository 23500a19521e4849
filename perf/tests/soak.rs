//! The soak's short form (`ant-quic-perf soak`, the 30-minute run is `scripts/soak.sh`): two
//! minutes of idle connections and churn against the `ant-quic` binary, after which its open
//! descriptors and `quic_connections_active` must be back where they started, its memory flat
//! after the warm-up, and churn connections (the load) must mostly succeed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ant-quic-perf");

#[test]
fn two_minutes_of_idle_and_churn_leave_nothing_behind() {
    // The node binary is built with the workspace (`cargo test --workspace`), next to this one.
    let node = Path::new(BIN).with_file_name("ant-quic");
    if !prerequisite::require(node.exists(), "the ant-quic binary next to ant-quic-perf (cargo build -p ant-quic)")
        .unwrap()
    {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("soak.json");
    let output = Command::new(BIN)
        .args(["soak", "--minutes", "2", "--idle", "1000", "--churn", "10", "--sample-seconds", "15", "--node-bin"])
        .arg(&node)
        .arg("--json-file")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "soak failed: {}\n{stdout}\n{stderr}", output.status);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (start, end) = (&report["start"], &report["end"]);
    assert_eq!(end["fds"], start["fds"], "descriptors leaked:\n{stdout}");
    assert_eq!(end["connections_active"], 0, "{stdout}");
    assert_eq!(report["idle_established"], 1000, "{stdout}");
    assert!(report["samples"].as_array().unwrap().len() >= 6, "{stdout}");
    let peak = report["samples"].as_array().unwrap().iter().map(|s| s["connections_active"].as_u64().unwrap()).max();
    assert!(peak >= Some(1000), "the idle connections never showed in quic_connections_active:\n{stdout}");
    // Churn is the load, not what is checked; a round lost to a loaded machine is said, not fatal.
    let (churned, errors) = (report["churn_connections"].as_u64().unwrap(), report["churn_errors"].as_u64().unwrap());
    assert!(churned >= 500 && errors * 20 <= churned, "{churned} churn connections, {errors} errors:\n{stdout}");
    assert_eq!(report["rss_flat"], true, "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
