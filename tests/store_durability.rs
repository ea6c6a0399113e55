//! Durability (kill -9 after writes) and concurrent writers on one consumer.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use support::{id, Gateway};

#[test]
fn a_thousand_consumers_survive_kill_9_and_are_served() {
    let mut gw = Gateway::start();
    let s = gw.seed_basic();
    let g = |c: &str| format!("/v1/gateways/{}/{c}", s.gid);
    let mut slugs = BTreeMap::new();
    for i in 0..1000 {
        let c = gw.create(
            &g("consumers"),
            json!({"name": format!("c{i}"), "registries": [{"id": s.registry_id}], "auth_ids": [s.auth_id]}),
        );
        slugs.insert(id(&c), c["slug"].as_str().unwrap().to_string());
    }
    gw.restart(); // SIGKILL, then start again on the same data dir
    let (st, list) = gw.admin("GET", &g("consumers"), None);
    assert_eq!(st, 200);
    let after: BTreeMap<String, String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] != "app")
        .map(|c| (id(c), c["slug"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(after, slugs);
    // The proxy's snapshot serves every one of them.
    for slug in slugs.values() {
        let r = gw
            .http
            .post(gw.proxy_url(&format!("/{slug}/v1/chat/completions")))
            .bearer_auth(&s.key)
            .json(&json!({"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{slug}: {}", r.text().unwrap());
    }
}

/// 8 clients attach and detach on the same consumer at once. Each client owns one registry,
/// one auth and one policy and finishes with a known operation on each, so every serial order
/// ends in the same state: any lost update shows as a difference.
#[test]
fn concurrent_attach_detach_ends_in_a_serial_state() {
    let gw = Gateway::start();
    let s = gw.seed_basic();
    let g = |c: &str| format!("/v1/gateways/{}/{c}", s.gid);
    let cpath = format!("{}/{}", g("consumers"), s.consumer_id);
    let mut owned = Vec::new();
    for i in 0..8 {
        let r = id(&gw.create(
            &g("registries"),
            json!({"name": format!("r{i}"), "provider": "mock"}),
        ));
        let a = id(&gw.create(
            &g("auths"),
            json!({"name": format!("a{i}"), "type": "api_key"}),
        ));
        let p = id(&gw.create(
            &g("policies"),
            json!({"name": format!("p{i}"), "type": "limits", "config": {"max_messages": i + 1}}),
        ));
        owned.push((r, a, p));
    }
    std::thread::scope(|scope| {
        for (i, (r, a, p)) in owned.iter().enumerate() {
            let gw = &gw;
            let cpath = &cpath;
            scope.spawn(move || {
                for round in 0..12 {
                    let w = json!({"weight": (round % 100) + 1});
                    for (path, body) in [
                        (format!("{cpath}/registries/{r}"), Some(w)),
                        (format!("{cpath}/auths/{a}"), None),
                        (format!("{cpath}/policies/{p}"), None),
                    ] {
                        let (st, e) = gw.admin("PUT", &path, body);
                        assert_eq!(st, 200, "{e}");
                        let (st, e) = gw.admin("DELETE", &path, None);
                        assert_eq!(st, 200, "{e}");
                    }
                }
                // The final operations: even clients attach (weight i+1), odd ones detach.
                if i % 2 == 0 {
                    let w = json!({"weight": i + 1});
                    assert_eq!(
                        gw.admin("PUT", &format!("{cpath}/registries/{r}"), Some(w))
                            .0,
                        200
                    );
                    assert_eq!(gw.admin("PUT", &format!("{cpath}/auths/{a}"), None).0, 200);
                    assert_eq!(
                        gw.admin("PUT", &format!("{cpath}/policies/{p}"), None).0,
                        200
                    );
                }
            });
        }
    });
    let (_, c) = gw.admin("GET", &cpath, None);
    let mut weights: Vec<Value> = c["registry_weights"].as_array().unwrap().clone();
    weights.sort_by_key(|w| w["registry_id"].as_str().unwrap().to_string());
    let mut expected = vec![json!({"registry_id": s.registry_id, "weight": 1})];
    let mut auths = vec![s.auth_id.clone()];
    let mut policies = Vec::new();
    for (i, (r, a, p)) in owned.iter().enumerate() {
        if i % 2 == 0 {
            expected.push(json!({"registry_id": r, "weight": i + 1}));
            auths.push(a.clone());
            policies.push(p.clone());
        }
    }
    expected.sort_by_key(|w| w["registry_id"].as_str().unwrap().to_string());
    assert_eq!(weights, expected);
    let sorted = |v: &Value| {
        let mut x: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        x.sort();
        x
    };
    auths.sort();
    policies.sort();
    assert_eq!(sorted(&c["auth_ids"]), auths);
    assert_eq!(sorted(&c["policy_ids"]), policies);
    // No dangling reference: every id the consumer names exists, and detached registries
    // can be deleted while attached ones cannot.
    for (i, (r, _, _)) in owned.iter().enumerate() {
        let (st, _) = gw.admin("DELETE", &format!("{}/{r}", g("registries")), None);
        assert_eq!(st, if i % 2 == 0 { 409 } else { 204 });
    }
}

/// `switchyard export` and `import -f` on a stopped gateway: the store comes back identical and
/// the API key keeps working.
#[test]
fn cli_export_then_import_on_a_fresh_store() {
    let mut gw = Gateway::start();
    let s = gw.seed_basic();
    let before = gw.export();
    gw.kill9();
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let out = std::process::Command::new(bin)
        .args(["export", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = gw.dir.path().join("backup.json");
    std::fs::write(&file, &out.stdout).unwrap();
    // Wipe the store, import, start again.
    std::fs::remove_dir_all(gw.data_dir().join("store")).unwrap();
    let imp = std::process::Command::new(bin)
        .args(["import", "--config"])
        .arg(gw.config_path())
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        imp.status.success(),
        "{}",
        String::from_utf8_lossy(&imp.stderr)
    );
    // A second import of the same file changes nothing.
    let again = std::process::Command::new(bin)
        .args(["import", "--config"])
        .arg(gw.config_path())
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(again.status.success());
    gw.restart();
    assert_eq!(gw.export(), before);
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{}/v1/chat/completions", s.slug)))
        .bearer_auth(&s.key)
        .json(&json!({"messages": [{"role": "user", "content": "still here"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // A broken document is refused with a message naming the entity, and changes nothing.
    std::fs::write(&file, r#"{"gateways": [{"id": "x", "name": 5}]}"#).unwrap();
    gw.kill9();
    let bad = std::process::Command::new(bin)
        .args(["import", "--config"])
        .arg(gw.config_path())
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("gateways[0].name"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    gw.restart();
    assert_eq!(gw.export(), before);
}

/// A write answered just before a SIGKILL is on disk only in the store journal (sled persists
/// in the background, every 500 ms): the next start replays it.
#[test]
fn a_write_answered_before_kill_9_is_replayed_from_the_journal() {
    let mut gw = Gateway::start();
    let s = gw.seed_basic();
    let path = format!("/v1/gateways/{}/consumers/{}", s.gid, s.consumer_id);
    let (st, _) = gw.admin("PATCH", &path, Some(json!({"headers": {"x-last": "1"}})));
    assert_eq!(st, 200);
    gw.kill9();
    let journal = std::fs::metadata(gw.data_dir().join("store/journal")).unwrap();
    assert!(
        journal.len() > 0,
        "the acknowledged write is in the journal"
    );
    gw.restart();
    let (st, c) = gw.admin("GET", &path, None);
    assert_eq!(st, 200);
    assert_eq!(c["headers"], json!({"x-last": "1"}));
    assert!(
        gw.logs().contains("replayed the store journal"),
        "{}",
        gw.logs()
    );
    // Replayed commits are checkpointed at open: the journal starts empty again.
    assert_eq!(
        std::fs::metadata(gw.data_dir().join("store/journal"))
            .unwrap()
            .len(),
        0
    );
}
