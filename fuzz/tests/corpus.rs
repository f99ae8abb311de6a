//! The fuzz targets as tests: every seed of `fuzz/corpus/<target>`, every input fuzzing
//! found (`fuzz/regressions/<target>`), and deterministic mutations of the seeds.
//!
//! The seeds are real provider payloads made by the fake servers of `baton-tests`;
//! `cargo test -p baton-fuzz --test corpus -- --ignored write_seeds` writes them again.

use baton_fuzz::{agent, salesiq_signer, split, target, TARGETS};
use std::path::{Path, PathBuf};

fn dir(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(name)
}

fn inputs(kind: &str, name: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir(kind, name)) else { return Vec::new() };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("readable input")))
        .collect();
    out.sort();
    out
}

/// xorshift64*: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Byte flips, interesting bytes, insertions, deletions, truncation, duplication and
/// splicing with another seed: the kinds of change libFuzzer makes.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: &[&[u8]] =
        &[b"\"", b"\\", b"{", b"}", b"[", b"]", b"null", b"-1", b"1e999", b"\\u0000", b"\xff", b"\n", b"0", b",", b":"];
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let s = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at..at, s.iter().copied());
            }
            2 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(v.len())..end);
            }
            3 => v.truncate(at),
            4 => {
                let end = (at + rng.below(64)).min(v.len());
                let chunk = v[at.min(v.len())..end].to_vec();
                v.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + rng.below(128)).min(other.len());
                v.splice(at.., other[from..end].iter().copied());
            }
            _ => v.insert(at.min(v.len()), rng.next() as u8),
        }
    }
    v
}

fn replay(name: &str, mutations: usize) {
    let run = target(name).expect("a target");
    let seeds = inputs("corpus", name);
    assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
    for (file, data) in seeds.iter().chain(&inputs("regressions", name)) {
        let outcome = std::panic::catch_unwind(|| run(data));
        assert!(outcome.is_ok(), "{name}: {file} failed");
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    for i in 0..mutations {
        let seed = &seeds[i % seeds.len()].1;
        let other = &seeds[rng.below(seeds.len())].1;
        let data = mutate(&mut rng, seed, other);
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            let kept = dir("regressions", name).join(format!("mutation-{i}"));
            let _ = std::fs::create_dir_all(kept.parent().expect("a parent"));
            let _ = std::fs::write(&kept, &data);
            panic!("{name}: mutation {i} failed; the input is kept in {}", kept.display());
        }
    }
}

macro_rules! replay_tests {
    ($($name:ident: $mutations:expr),* $(,)?) => {
        $( #[test] fn $name() { replay(stringify!($name), $mutations) } )*
        const TESTED: &[&str] = &[$(stringify!($name)),*];
    };
}

replay_tests! {
    telegram: 3000,
    line: 3000,
    whatsapp: 3000,
    salesiq: 1000,
    intercom: 3000,
    livechat: 3000,
    webhook_desk: 3000,
    agent_api: 3000,
    hosted_agent: 3000,
    config: 3000,
    http: 400,
}

/// Every target is replayed here and has a libFuzzer binary.
#[test]
fn every_target_is_tested_and_fuzzed() {
    for (name, _) in TARGETS {
        assert!(TESTED.contains(name), "{name} is not replayed");
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("libfuzzer/fuzz_targets").join(format!("{name}.rs"));
        let src = std::fs::read_to_string(&bin).unwrap_or_else(|_| panic!("{} is missing", bin.display()));
        assert!(src.contains(&format!("baton_fuzz::target(\"{name}\")")), "{} runs another target", bin.display());
    }
}

/// The harness's own checks hold on real signatures: a SalesIQ seed signed with the fuzz
/// key verifies (the target asserts that fuzzed signatures never do).
#[test]
fn the_salesiq_key_verifies_signed_seeds() {
    let keys = &agent().salesiq.as_ref().expect("salesiq").webhook_public_keys;
    for (file, data) in inputs("corpus", "salesiq") {
        let (_, body) = split(&data);
        let sig = salesiq_signer().sign(body);
        assert!(baton_connectors::salesiq::verify(keys, body, Some(&sig)).is_ok(), "{file}");
    }
}

/// Authenticated seeds of the HTTP target get through: without this the fuzzer would only
/// ever see 401s.
#[test]
fn authenticated_http_seeds_are_accepted() {
    for (file, data) in inputs("corpus", "http").into_iter().filter(|(f, _)| f.starts_with("ok-")) {
        let status = baton_fuzz::http::send(&data).expect("a request");
        assert!((200..300).contains(&status), "{file}: {status}");
    }
}

/// Writes the seed corpus (run by hand after changing a payload builder).
#[test]
#[ignore]
fn write_seeds() {
    seeds::write();
}

mod seeds {
    use super::dir;
    use baton_fuzz::*;
    use baton_tests::{intercom as ic, line as ln, livechat as lc, salesiq as sq, telegram as tg, whatsapp as wa};
    use serde_json::json;

    fn put(target: &str, file: &str, data: &[u8]) {
        let d = dir("corpus", target);
        std::fs::create_dir_all(&d).expect("corpus dir");
        std::fs::write(d.join(file), data).expect("seed written");
    }

    /// `header '\n' body`.
    fn hb(header: &str, body: &[u8]) -> Vec<u8> {
        let mut v = header.as_bytes().to_vec();
        v.push(b'\n');
        v.extend_from_slice(body);
        v
    }

    /// Route index and flags of the HTTP target, then `query '\n' body`.
    fn req(route: u8, flags: u8, query: &str, body: &[u8]) -> Vec<u8> {
        let mut v = vec![route, flags];
        v.extend(hb(query, body));
        v
    }

    pub fn write() {
        let _ = std::fs::remove_dir_all(dir("corpus", ""));
        let j = |v: serde_json::Value| serde_json::to_vec(&v).expect("JSON");

        let tg_text = j(tg::text_update(1001, 42, "What are your opening hours?"));
        let tg_photo = j(tg::photo_update(1002, 42, "AgAD-file", "a caption"));
        let tg_button = j(tg::callback_update(1003, 42, "end"));
        put("telegram", "text", &hb(TELEGRAM_SECRET, &tg_text));
        put("telegram", "photo", &hb("wrong", &tg_photo));
        put("telegram", "callback", &tg_button);

        let ln_text = ln::webhook_body(&[ln::text_event("01H", "U1", "human", Some("rt"))]);
        let ln_more = ln::webhook_body(&[
            ln::image_event("01I", "U1", "m1", None),
            ln::postback_event("01J", "U2", "end", Some("rt2")),
        ]);
        put("line", "text", &hb(&ln::sign(LINE_SECRET, &ln_text), &ln_text));
        put("line", "image-postback", &hb(&ln::sign(LINE_SECRET, &ln_more), &ln_more));
        put("line", "verify", br#"{"destination":"U0","events":[]}"#);

        let wa_text = wa::webhook_body(WHATSAPP_PHONE_ID, &[wa::text_message("wamid.1", "385911234567", "hi")], &[]);
        let wa_more = wa::webhook_body(
            WHATSAPP_PHONE_ID,
            &[
                wa::button_reply("wamid.2", "385911234567", "end", "End"),
                wa::image_message("wamid.3", "385911234567", "media-1", Some("look")),
                wa::location_message("wamid.4", "385911234567", 45.8, 15.97, Some("Zagreb"), None),
            ],
            &[
                wa::status_update("wamid.5", "385911234567", "read"),
                wa::failed_status("wamid.6", "385911234567", 131047, "Re-engagement message"),
            ],
        );
        put("whatsapp", "text", &hb(&wa::sign(WHATSAPP_APP_SECRET, &wa_text), &wa_text));
        put("whatsapp", "mixed", &hb(&wa::sign(WHATSAPP_APP_SECRET, &wa_more), &wa_more));
        put("whatsapp", "handshake", &hb(&format!("subscribe&{WHATSAPP_VERIFY_TOKEN}&1158201444"), b""));

        put("salesiq", "created", &hb("c2lnbmF0dXJl", &sq::created("c1", "I need help", Some("a@example.com"))));
        put("salesiq", "visitor", &sq::visitor_replied("c1", "m1", "hello"));
        put("salesiq", "operator", &sq::operator_replied("c1", "m2", "op-1", "Hi, I am Ana"));
        put("salesiq", "completed", &sq::redelivered(&sq::completed("c1"), 2));

        let ic_user = ic::user_replied("215", "p1", "contact-1", "hello");
        put("intercom", "user-replied", &hb(&ic::sign(INTERCOM_SECRET, &ic_user), &ic_user));
        put("intercom", "user-created", &ic::user_created("216", "m1", "contact-2", "b@example.com", "help"));
        put("intercom", "admin-replied", &ic::admin_replied("215", "p2", "99", "<p>Hi <b>there</b></p>"));
        put("intercom", "admin-closed", &ic::redelivered(&ic::admin_closed("215", "99")));
        put("intercom", "assigned", &ic::admin_assigned("215", "99", "814860"));
        put("intercom", "ping", &ic::ping());

        put("livechat", "event", &hb(LIVECHAT_SECRET, &lc::incoming_event("CH1", "EV1", "cust-1", "hi", None)));
        put("livechat", "file", &lc::incoming_file("CH1", "EV2", "agent-1", "a.pdf", "https://cdn.example.com/a.pdf"));
        put(
            "livechat",
            "chat",
            &lc::with_secret(&lc::incoming_chat("CH2", "cust-2", Some("c@example.com"), "help"), Some(LIVECHAT_SECRET)),
        );
        put("livechat", "deactivated", &lc::chat_deactivated("CH2"));

        let secret = baton_connectors::standard_webhooks::SigningSecret::parse(SIGNING_SECRET).expect("secret");
        let msg =
            j(json!({"conversation_id": "widget:u1", "timestamp": 1_700_000_000_000i64, "body": "Hello from a human"}));
        let close = j(json!({"conversation_id": "widget:u1", "timestamp": 1_700_000_000_001i64}));
        put(
            "webhook_desk",
            "message",
            &hb(&format!("msg_1 {NOW_SECS} {}", secret.sign("msg_1", NOW_SECS, &msg)), &msg),
        );
        put(
            "webhook_desk",
            "close",
            &hb(&format!("msg_2 {} {}", NOW_SECS - 299, secret.sign("msg_2", NOW_SECS - 299, &close)), &close),
        );
        put("webhook_desk", "probe", b"{}");

        let converse = j(json!({"platformConversationId": "ivr-7", "eventType": "message", "text": "human",
            "metaData": [{"key": "phone", "value": "+385911234567", "sanitize": true}, {"key": "plan", "value": "gold"}]}));
        put("agent_api", "message", &converse);
        put("agent_api", "start", &j(json!({"platformConversationId": "ivr-8", "eventType": "start"})));
        put("agent_api", "end", &j(json!({"platformConversationId": "ivr-8", "eventType": "end"})));

        put(
            "hosted_agent",
            "send",
            &j(json!({"botId": "b1", "data": {"platformConversationId": "c1", "eventType": "sendMessage",
            "text": "Hi", "buttons": [{"text": "Yes"}], "carouselCards": [{"title": "T", "description": "D", "buttons": [{"text": "Buy"}]}]}})),
        );
        put(
            "hosted_agent",
            "escalate",
            &j(
                json!({"botId": "b1", "data": {"platformConversationId": "c1", "eventType": "escalate", "escalateTo": "desk"}}),
            ),
        );
        put(
            "hosted_agent",
            "action",
            &j(json!({"botId": "b1", "platformConversationId": "c1", "actionName": "lookup",
            "data": [{"key": "phone", "value": ["+385"]}, {"key": "n", "value": 3}]})),
        );

        put("config", "example", include_bytes!("../../examples/agents.toml"));
        put("config", "fuzz-agent", agents_toml().as_bytes());

        // HTTP: route indexes as in `http::ROUTES`; names starting with "ok-" must be accepted.
        put("http", "ok-healthz", &req(0, 1, "", b""));
        put("http", "ok-converse", &req(3, 1, "", &converse));
        put("http", "ok-telegram", &req(4, 1, "", &tg_text));
        put("http", "ok-line", &req(5, 1, "", &ln_text));
        put(
            "http",
            "ok-whatsapp-handshake",
            &req(6, 1, &format!("hub.mode=subscribe&hub.verify_token={WHATSAPP_VERIFY_TOKEN}&hub.challenge=42"), b""),
        );
        put("http", "ok-whatsapp", &req(7, 1, "", &wa_text));
        put("http", "human-message", &req(8, 1, "", &msg));
        put("http", "human-close", &req(9, 1, "", &close));
        put("http", "ok-intercom", &req(13, 1, "", &ic_user));
        put(
            "http",
            "livechat",
            &req(
                14,
                1,
                "",
                &lc::with_secret(&lc::incoming_event("CH1", "EV1", "cust-1", "hi", None), Some(LIVECHAT_SECRET)),
            ),
        );
        put("http", "ok-salesiq", &req(15, 1, "", &sq::created("c1", "I need help", Some("a@example.com"))));
        put("http", "ok-widget-session", &req(17, 1, "", b"{}"));
        put("http", "ok-widget-send", &req(18, 1, "", br#"{"text":"What are your opening hours?","client_id":"c1"}"#));
        put("http", "ok-widget-poll", &req(19, 1, "after=0", b""));
        put("http", "ok-widget-email", &req(20, 1, "", br#"{"email":"a@example.com"}"#));
        put("http", "ok-console-list", &req(23, 1, "", b""));
        put("http", "console-reply", &req(26, 1, "", br#"{"text":"hello"}"#));
        put("http", "ok-console-status", &req(28, 1, "", b""));
        put("http", "unauthenticated-send", &req(18, 0, "", br#"{"text":"x"}"#));
        put("http", "form-login", &req(29, 2, "", b"key=wrong"));
    }
}
