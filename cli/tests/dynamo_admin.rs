//! `baton agents apply|list` and `baton trace` against the AWS deployment's table
//! (`--store dynamodb://TABLE`), on moto. Secrets must be SSM references there.

use baton_tests::moto;
use std::process::Command;

fn baton(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_baton")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_go_to_dynamodb_with_secret_references_only() {
    moto::endpoint();
    let table = moto::unique_name("cli");
    let (dynamo, _) = baton_aws::clients_from_env().await;
    baton_aws::create_table(&dynamo, &table).await.unwrap();
    let store = format!("dynamodb://{table}");
    let dir = tempfile::tempdir().unwrap();

    let plain = dir.path().join("plain.toml");
    std::fs::write(
        &plain,
        "[[agent]]\nid = \"shop\"\n[agent.desk]\nkind = \"webhook\"\nurl = \"https://desk.example.com\"\nsigning_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
    )
    .unwrap();
    let out = baton(&["agents", "apply", plain.to_str().unwrap(), "--store", &store]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("desk.signing_secret must be an SSM Parameter Store reference"), "{err}");
    assert!(!err.contains("MfKQ9r8"), "the secret is not echoed");

    let referenced = dir.path().join("ref.toml");
    std::fs::write(
        &referenced,
        "[[agent]]\nid = \"shop\"\nname = \"Shop\"\n[agent.desk]\nkind = \"webhook\"\nurl = \"https://desk.example.com\"\nsigning_secret = \"ssm:/baton/shop/desk-signing-secret\"\n",
    )
    .unwrap();
    let out = baton(&["agents", "apply", referenced.to_str().unwrap(), "--store", &store]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("created agent shop; its access token (shown once): bat_"));

    // The deployment serves other people's agents: private endpoints need an explicit yes.
    let private = dir.path().join("private.toml");
    std::fs::write(
        &private,
        "[[agent]]\nid = \"lab\"\n[agent.desk]\nkind = \"webhook\"\nurl = \"http://10.1.2.3:8080\"\n",
    )
    .unwrap();
    let out = baton(&["agents", "apply", private.to_str().unwrap(), "--store", &store]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent lab: desk.url points at 10.1.2.3"), "{err}");
    let out = baton(&["agents", "apply", private.to_str().unwrap(), "--store", &store, "--allow-private-targets"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let out = baton(&["agents", "list", "--store", &store]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("shop\tShop\tdesk: webhook https://desk.example.com"), "{listed}");
    assert!(listed.contains("tokens: 1"), "{listed}");

    let out = baton(&["trace", "shop#widget#nobody", "--store", &store]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing recorded"));

    // A data-protection request against the table (the semantics are in the conformance suite).
    let out = baton(&["users", "export", "shop#widget#nobody", "--store", &store]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(export["session"].is_null() && export["conversation"] == "shop#widget#nobody", "{export}");
    let out = baton(&["users", "erase", "shop#widget#nobody", "--yes", "--store", &store]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 record(s) deleted"));

    let out = baton(&["agents", "list", "--store", "dynamo:/x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dynamodb://TABLE"));
}
