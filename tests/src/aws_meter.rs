//! A metering proxy in front of the AWS test server: every DynamoDB, SQS and SSM call of
//! the clients pointed at it is forwarded to moto and priced the way AWS bills it.
//!
//! - DynamoDB on-demand: read request units per 4 KB of items read (half for eventually
//!   consistent reads, double in transactions), write request units per 1 KB of the larger
//!   of the item before and after the write (double in transactions), plus one unit per
//!   write to a sparse keys-only index the item enters, leaves or moves in. Item sizes
//!   follow DynamoDB's rules (attribute names plus values); the before and after images of
//!   written items are read from moto around the forwarded call, outside the meter.
//! - SQS: one request per call and per started 64 KB of payload.
//! - SSM: one API call per call (standard parameters: no charge, counted anyway).
//!
//! Only calls made through the proxy are metered, so a test points the code under test at
//! [`AwsMeter::url`] and keeps its own harness calls on the plain endpoint.

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A sparse index: its name and the two attributes that put an item into it.
#[derive(Debug, Clone)]
pub struct SparseIndex {
    pub name: String,
    pub keys: [String; 2],
}

/// What one forwarded call is billed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Billed {
    /// DynamoDB read request units.
    pub read_units: f64,
    /// DynamoDB write request units on the table.
    pub write_units: f64,
    /// DynamoDB write request units on sparse indexes.
    pub index_write_units: f64,
    /// SQS requests (per 64 KB chunk).
    pub sqs_requests: f64,
}

/// One metered call.
#[derive(Debug, Clone)]
pub struct MeteredCall {
    /// `dynamodb`, `sqs` or `ssm`.
    pub service: String,
    /// The API action, e.g. `TransactWriteItems`.
    pub action: String,
    /// Transaction entries or batch entries in the call (1 for single calls).
    pub entries: usize,
    pub billed: Billed,
    /// Table write units per kind of item written (see [`item_kind`]).
    pub writes_by_kind: Vec<(String, f64)>,
}

#[derive(Clone)]
struct State {
    upstream: String,
    http: reqwest::Client,
    calls: Arc<Mutex<Vec<MeteredCall>>>,
    indexes: Arc<Vec<SparseIndex>>,
}

/// The proxy; it serves until the test process ends.
pub struct AwsMeter {
    addr: std::net::SocketAddr,
    calls: Arc<Mutex<Vec<MeteredCall>>>,
}

impl AwsMeter {
    /// Start a proxy forwarding to `upstream` (moto's endpoint URL); `indexes` are the
    /// table's sparse keys-only indexes.
    pub async fn start(upstream: &str, indexes: Vec<SparseIndex>) -> AwsMeter {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let state = State {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            calls: calls.clone(),
            indexes: Arc::new(indexes),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let addr = crate::serve_on_loopback(app).await;
        AwsMeter { addr, calls }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call metered so far, in order.
    pub fn calls(&self) -> Vec<MeteredCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many calls were metered so far.
    pub fn call_count(&self) -> usize {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The IAM actions (`dynamodb:GetItem`, ...) of the calls metered after the first `from`.
    pub fn actions_since(&self, from: usize) -> Vec<String> {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.iter().skip(from).map(|c| format!("{}:{}", c.service, c.action)).collect()
    }

    /// Forget the calls metered so far (e.g. the set-up's).
    pub fn reset(&self) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Per service and action: calls, entries and billed units, summed.
pub fn summarize(calls: &[MeteredCall]) -> BTreeMap<(String, String), (usize, usize, Billed)> {
    let mut out: BTreeMap<(String, String), (usize, usize, Billed)> = BTreeMap::new();
    for c in calls {
        let e = out.entry((c.service.clone(), c.action.clone())).or_default();
        e.0 += 1;
        e.1 += c.entries;
        e.2.read_units += c.billed.read_units;
        e.2.write_units += c.billed.write_units;
        e.2.index_write_units += c.billed.index_write_units;
        e.2.sqs_requests += c.billed.sqs_requests;
    }
    out
}

async fn forward(
    axum::extract::State(st): axum::extract::State<State>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (service, action) = classify(&target, &uri, &body);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let writes = if service == "dynamodb" { written_keys(&action, &request) } else { Vec::new() };
    let mut before = Vec::new();
    for (table, key) in &writes {
        before.push(get_item(&st, table, key).await);
    }

    let answer = match crate::forward::send(
        &st.http,
        &st.upstream,
        "metering proxy",
        method,
        &uri,
        &headers,
        body.clone(),
    )
    .await
    {
        Ok(answer) => answer,
        Err(failed) => return failed,
    };
    let resp_body = answer.body.clone();
    let response: Value = serde_json::from_slice(&resp_body).unwrap_or(Value::Null);

    let mut after = Vec::new();
    for (table, key) in &writes {
        after.push(get_item(&st, table, key).await);
    }
    let (entries, billed) = match service.as_str() {
        "dynamodb" => bill_dynamodb(&action, &request, &response, &before, &after, &st.indexes),
        "sqs" => bill_sqs(&action, &request, body.len()),
        _ => (1, Billed::default()),
    };
    if std::env::var_os("BATON_METER_LARGE_ITEMS").is_some() {
        before.iter().zip(&after).for_each(|(old, new)| print_large_item(&action, old, new));
    }
    let writes_by_kind = writes
        .iter()
        .zip(before.iter().zip(&after))
        .map(|((_, key), (old, new))| (item_kind(key), item_write_units(&action, old, new)))
        .collect();
    let call = MeteredCall { service, action, entries, billed, writes_by_kind };
    st.calls.lock().unwrap_or_else(|p| p.into_inner()).push(call);

    answer.into_response()
}

/// Service and action of a request: JSON protocols name them in `X-Amz-Target`
/// (`DynamoDB_20120810.GetItem`, `AmazonSQS.SendMessage`, `AmazonSSM.GetParameter`); the
/// SQS query protocol in the form body.
fn classify(target: &str, uri: &axum::http::Uri, body: &[u8]) -> (String, String) {
    if let Some((prefix, action)) = target.split_once('.') {
        let service = match prefix {
            p if p.starts_with("DynamoDB") => "dynamodb",
            "AmazonSQS" => "sqs",
            "AmazonSSM" => "ssm",
            other => other,
        };
        return (service.to_string(), action.to_string());
    }
    let form = String::from_utf8_lossy(body);
    let action = form
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .map(str::to_string)
        .unwrap_or_else(|| uri.path().to_string());
    ("sqs".to_string(), action)
}

/// (table, key) of every item a DynamoDB write touches.
fn written_keys(action: &str, request: &Value) -> Vec<(String, Value)> {
    let table = request["TableName"].as_str().unwrap_or("").to_string();
    match action {
        "PutItem" => vec![(table, key_of(&request["Item"]))],
        "UpdateItem" | "DeleteItem" => vec![(table, request["Key"].clone())],
        "TransactWriteItems" => request["TransactItems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let (_, op) = entry.as_object()?.iter().next()?;
                let key = if op.get("Item").is_some() { key_of(&op["Item"]) } else { op["Key"].clone() };
                Some((op["TableName"].as_str()?.to_string(), key))
            })
            .collect(),
        "BatchWriteItem" => request["RequestItems"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(table, ops)| {
                ops.as_array().into_iter().flatten().map(move |op| {
                    let key = match op.get("PutRequest") {
                        Some(p) => key_of(&p["Item"]),
                        None => op["DeleteRequest"]["Key"].clone(),
                    };
                    (table.clone(), key)
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What kind of item a key names: the sort key's first `#`-separated part (`SESSION`,
/// `OUTBOX`, `TRACE`, ...), or the partition key's when the sort key is a placeholder
/// (`SEEN`, `IDEM`, `KV`, ...).
pub fn item_kind(key: &Value) -> String {
    let part = |v: &Value| v["S"].as_str().unwrap_or("").split('#').next().unwrap_or("").to_string();
    let sk = part(&key["sk"]);
    if sk.is_empty() || sk == "-" || sk == "MAP" || sk == "OWNER" {
        part(&key["pk"])
    } else {
        sk
    }
}

/// Table write units per item kind over `calls`.
pub fn writes_by_kind(calls: &[MeteredCall]) -> BTreeMap<String, (usize, f64)> {
    let mut out: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (kind, units) in calls.iter().flat_map(|c| c.writes_by_kind.iter()) {
        let e = out.entry(kind.clone()).or_default();
        e.0 += 1;
        e.1 += units;
    }
    out
}

/// The table's key attributes of an item (`pk`, `sk`).
fn key_of(item: &Value) -> Value {
    json!({ "pk": item["pk"], "sk": item["sk"] })
}

/// The item as stored now, read from the upstream without metering.
async fn get_item(st: &State, table: &str, key: &Value) -> Value {
    let body = json!({ "TableName": table, "Key": key, "ConsistentRead": true });
    let resp = st
        .http
        .post(format!("{}/", st.upstream))
        .header("x-amz-target", "DynamoDB_20120810.GetItem")
        .header("content-type", "application/x-amz-json-1.0")
        // moto routes by the SigV4 credential scope; any credentials do.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .await;
    match resp {
        Ok(r) => r.json::<Value>().await.map(|v| v["Item"].clone()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

fn bill_sqs(action: &str, request: &Value, body_len: usize) -> (usize, Billed) {
    let entries = match action {
        "SendMessageBatch" | "DeleteMessageBatch" | "ChangeMessageVisibilityBatch" => {
            request["Entries"].as_array().map(Vec::len).unwrap_or(1)
        }
        _ => 1,
    };
    // Each started 64 KB of payload is billed as one request.
    let chunks = body_len.div_ceil(64 * 1024).max(1);
    (entries, Billed { sqs_requests: chunks as f64, ..Billed::default() })
}

fn bill_dynamodb(
    action: &str,
    request: &Value,
    response: &Value,
    before: &[Value],
    after: &[Value],
    indexes: &[SparseIndex],
) -> (usize, Billed) {
    let mut b = Billed::default();
    let consistent = request["ConsistentRead"].as_bool().unwrap_or(false);
    let read_factor = if consistent { 1.0 } else { 0.5 };
    let entries;
    match action {
        "GetItem" => {
            entries = 1;
            b.read_units = read_units(item_size(&response["Item"])) * read_factor;
        }
        "Query" | "Scan" => {
            entries = 1;
            let total: usize = response["Items"].as_array().into_iter().flatten().map(item_size).sum();
            b.read_units = read_units(total) * read_factor;
        }
        "BatchGetItem" => {
            let mut n = 0;
            for (table, items) in response["Responses"].as_object().into_iter().flatten() {
                let consistent = request["RequestItems"][table]["ConsistentRead"].as_bool().unwrap_or(false);
                for item in items.as_array().into_iter().flatten() {
                    n += 1;
                    b.read_units += read_units(item_size(item)) * if consistent { 1.0 } else { 0.5 };
                }
            }
            // Keys asked for but not found still cost the minimum read.
            let asked: usize = request["RequestItems"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, r)| r["Keys"].as_array().map(Vec::len).unwrap_or(0))
                .sum();
            b.read_units += asked.saturating_sub(n) as f64 * 0.5;
            entries = asked;
        }
        "TransactGetItems" => {
            entries = response["Responses"].as_array().map(Vec::len).unwrap_or(0);
            for r in response["Responses"].as_array().into_iter().flatten() {
                b.read_units += 2.0 * read_units(item_size(&r["Item"]));
            }
        }
        "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" | "TransactWriteItems" => {
            entries = before.len();
            for (old, new) in before.iter().zip(after) {
                b.write_units += item_write_units(action, old, new);
                for index in indexes {
                    b.index_write_units += index_writes(index, old, new);
                }
            }
        }
        _ => entries = 1,
    }
    (entries, b)
}

/// Table write units of one item written by `action`, going from `old` to `new`: per 1 KB
/// of the larger image, doubled in a transaction.
fn item_write_units(action: &str, old: &Value, new: &Value) -> f64 {
    let factor = if action == "TransactWriteItems" { 2.0 } else { 1.0 };
    factor * write_units(item_size(old).max(item_size(new)))
}

/// With `BATON_METER_LARGE_ITEMS` set, each item written that bills more than one unit
/// (once per write, as it is forwarded) prints the larger image's attributes by size (name
/// and value), largest first: what took the item past 1 KB.
fn print_large_item(action: &str, old: &Value, new: &Value) {
    let larger = if item_size(old) >= item_size(new) { old } else { new };
    let Some(attrs) = larger.as_object().filter(|_| write_units(item_size(larger)) > 1.0) else { return };
    let mut sizes: Vec<(&str, usize)> = attrs.iter().map(|(k, v)| (k.as_str(), k.len() + value_size(v))).collect();
    sizes.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    eprintln!("large item: {action} {} -> {} bytes {sizes:?}", item_size(old), item_size(new));
}

/// Read units of `bytes` read: 4 KB each, at least one.
fn read_units(bytes: usize) -> f64 {
    bytes.div_ceil(4096).max(1) as f64
}

/// Write units of an item of `bytes`: 1 KB each, at least one.
fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

/// Writes to a keys-only sparse index when an item goes from `old` to `new`: one when it
/// enters or leaves the index, two when its index key changes (delete and put).
fn index_writes(index: &SparseIndex, old: &Value, new: &Value) -> f64 {
    let keys = |item: &Value| -> Option<(Value, Value)> {
        let a = item.get(&index.keys[0])?.clone();
        let b = item.get(&index.keys[1])?.clone();
        Some((a, b))
    };
    match (keys(old), keys(new)) {
        (None, None) => 0.0,
        (Some(_), None) | (None, Some(_)) => 1.0,
        (Some(a), Some(b)) if a == b => 0.0,
        (Some(_), Some(_)) => 2.0,
    }
}

/// An item's size as DynamoDB counts it: attribute name bytes plus value sizes.
pub fn item_size(item: &Value) -> usize {
    item.as_object().map(|m| m.iter().map(|(name, v)| name.len() + value_size(v)).sum()).unwrap_or(0)
}

/// A DynamoDB JSON value's size (`{"S": ...}`, `{"N": ...}`, ...).
fn value_size(v: &Value) -> usize {
    let Some((ty, inner)) = v.as_object().and_then(|m| m.iter().next()) else { return 0 };
    match ty.as_str() {
        "S" => inner.as_str().map(str::len).unwrap_or(0),
        "N" => number_size(inner.as_str().unwrap_or("0")),
        "B" => inner.as_str().map(|s| s.len() * 3 / 4).unwrap_or(0),
        "BOOL" | "NULL" => 1,
        "SS" => inner.as_array().into_iter().flatten().map(|s| s.as_str().map(str::len).unwrap_or(0)).sum(),
        "NS" => inner.as_array().into_iter().flatten().map(|s| number_size(s.as_str().unwrap_or("0"))).sum(),
        "M" => 3 + inner.as_object().map(|m| m.iter().map(|(k, v)| 1 + k.len() + value_size(v)).sum()).unwrap_or(0),
        "L" => 3 + inner.as_array().map(|l| l.iter().map(|v| 1 + value_size(v)).sum()).unwrap_or(0),
        _ => 0,
    }
}

/// Numbers take about one byte per two significant digits, plus one.
fn number_size(n: &str) -> usize {
    let digits = n.trim_start_matches(['-', '+']).replace('.', "");
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len().max(1);
    significant.div_ceil(2) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_published_rules() {
        // Name bytes + UTF-8 bytes of a string.
        assert_eq!(item_size(&json!({"pk": {"S": "AGENT#x"}, "n": {"N": "12345"}})), 2 + 7 + 1 + 4);
        assert_eq!(read_units(0), 1.0);
        assert_eq!(read_units(4096), 1.0);
        assert_eq!(read_units(4097), 2.0);
        assert_eq!(write_units(1025), 2.0);
    }

    #[test]
    fn index_writes_count_entering_leaving_and_moving() {
        let ix = SparseIndex { name: "due".into(), keys: ["s".into(), "a".into()] };
        let none = json!({"pk": {"S": "x"}});
        let at1 = json!({"s": {"N": "1"}, "a": {"N": "10"}});
        let at2 = json!({"s": {"N": "1"}, "a": {"N": "20"}});
        assert_eq!(index_writes(&ix, &none, &none), 0.0);
        assert_eq!(index_writes(&ix, &none, &at1), 1.0);
        assert_eq!(index_writes(&ix, &at1, &none), 1.0);
        assert_eq!(index_writes(&ix, &at1, &at1), 0.0);
        assert_eq!(index_writes(&ix, &at1, &at2), 2.0);
    }

    #[test]
    fn transactions_bill_double() {
        let item = json!({"pk": {"S": "a"}, "sk": {"S": "b"}});
        let (_, b) = bill_dynamodb(
            "TransactWriteItems",
            &json!({}),
            &json!({}),
            &[Value::Null],
            std::slice::from_ref(&item),
            &[],
        );
        assert_eq!(b.write_units, 2.0);
        let (_, b) = bill_dynamodb("PutItem", &json!({}), &json!({}), &[Value::Null], &[item], &[]);
        assert_eq!(b.write_units, 1.0);
    }
}
