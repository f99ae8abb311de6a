//! A fake ERP middleware that follows `docs/erp-openapi.yaml`: Bearer auth, contacts by phone,
//! product search, orders prepared as transactions, changes and cancellations, commits with an
//! `Idempotency-Key` applied once (a repeat answers the first result), and transaction status.
//! It can lose the answer of the next commits after applying them (as a timeout or a 502 in
//! front of a working ERP does), so tests see that nothing is booked twice.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct ErpRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub body: Value,
    pub idempotency_key: Option<String>,
    pub status: u16,
}

#[derive(Debug, Clone)]
pub struct Transaction {
    pub id: String,
    pub order_id: String,
    /// `prepared`, `committed`, `aborted`
    pub status: String,
}

#[derive(Default)]
struct Erp {
    requests: Vec<ErpRequest>,
    contacts: Vec<Value>,
    products: Vec<Value>,
    orders: BTreeMap<String, Value>,
    transactions: BTreeMap<String, Transaction>,
    /// Idempotency key -> (status, answer)
    applied: BTreeMap<String, (u16, Value)>,
    /// Apply the next commits but answer 502 instead.
    lose_commit_answers: usize,
    /// Refuse the next commits with 503 without applying them.
    fail_commits: usize,
    next: u64,
}

#[derive(Clone)]
struct St {
    key: Arc<str>,
    erp: Arc<Mutex<Erp>>,
}

pub struct FakeErp {
    pub addr: SocketAddr,
    erp: Arc<Mutex<Erp>>,
}

impl FakeErp {
    /// Start with one contact (+385911234567, Ana Horvat) and three products.
    pub async fn start(api_key: &str) -> FakeErp {
        let erp = Erp {
            contacts: vec![json!({"id": "C-100", "name": "Ana Horvat", "company": "Horvat d.o.o.",
                "email": "ana@horvat.example", "phone": "+385911234567", "customer_number": "10042"})],
            products: vec![
                json!({"sku": "FLR-T550", "name": "Flour T550, 1 kg", "price": {"amount": "1.20", "currency": "EUR"}, "unit": "pcs", "in_stock": true}),
                json!({"sku": "FLR-T850", "name": "Flour T850, 1 kg", "price": {"amount": "1.35", "currency": "EUR"}, "unit": "pcs", "in_stock": true}),
                json!({"sku": "SGR-1", "name": "Sugar, 1 kg", "price": {"amount": "0.99", "currency": "EUR"}, "unit": "pcs", "in_stock": false}),
            ],
            ..Erp::default()
        };
        let erp = Arc::new(Mutex::new(erp));
        let app = Router::new().fallback(handle).with_state(St { key: api_key.into(), erp: erp.clone() });
        let addr = crate::serve_on_loopback(app).await;
        FakeErp { addr, erp }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<ErpRequest> {
        self.erp.lock().unwrap().requests.clone()
    }

    pub fn transactions(&self) -> Vec<Transaction> {
        self.erp.lock().unwrap().transactions.values().cloned().collect()
    }

    /// Orders booked (committed), by id.
    pub fn committed_orders(&self) -> Vec<String> {
        let erp = self.erp.lock().unwrap();
        erp.transactions.values().filter(|t| t.status == "committed").map(|t| t.order_id.clone()).collect()
    }

    /// Refuse the next `n` commits with 503, applying nothing (an ERP that stumbles).
    pub fn fail_commits(&self, n: usize) {
        self.erp.lock().unwrap().fail_commits = n;
    }

    /// Abort a prepared transaction (it lapsed, or someone rejected it in the ERP).
    pub fn abort(&self, transaction_id: &str) {
        if let Some(t) = self.erp.lock().unwrap().transactions.get_mut(transaction_id) {
            t.status = "aborted".into();
        }
    }

    /// Apply the next `n` commits but answer them with 502, as a lost answer.
    pub fn lose_commit_answers(&self, n: usize) {
        self.erp.lock().unwrap().lose_commit_answers = n;
    }
}

fn error(status: u16, code: &str, message: &str) -> (u16, Value) {
    (status, json!({"error": {"code": code, "message": message}}))
}

fn priced(erp: &Erp, lines: &Value) -> Result<(Vec<Value>, f64), (u16, Value)> {
    let Some(lines) = lines.as_array().filter(|l| !l.is_empty()) else {
        return Err(error(422, "invalid_lines", "lines must be a non-empty array"));
    };
    let mut out = Vec::new();
    let mut total = 0.0;
    for (i, l) in lines.iter().enumerate() {
        let sku = l["sku"].as_str().unwrap_or_default();
        let Some(qty) = l["quantity"].as_u64().filter(|q| *q > 0) else {
            return Err(error(422, "invalid_quantity", &format!("lines[{i}].quantity must be a positive integer")));
        };
        let Some(p) = erp.products.iter().find(|p| p["sku"] == sku) else {
            return Err(error(422, "unknown_sku", &format!("lines[{i}].sku {sku:?} is not a product")));
        };
        let price: f64 = p["price"]["amount"].as_str().unwrap_or("0").parse().unwrap_or(0.0);
        let line_total = price * qty as f64;
        total += line_total;
        out.push(json!({"sku": sku, "name": p["name"], "quantity": qty, "unit_price": format!("{price:.2}"),
            "line_total": format!("{line_total:.2}")}));
    }
    Ok((out, total))
}

fn prepare(erp: &mut Erp, order_id: String, contact_id: &str, lines: Vec<Value>, total: f64, status: &str) -> Value {
    erp.next += 1;
    let tx = format!("TX-{}", 5000 + erp.next);
    let order = json!({"id": order_id, "contact_id": contact_id, "status": status, "lines": lines,
        "total": {"amount": format!("{total:.2}"), "currency": "EUR"}, "expires_at": "2026-12-02T23:59:59Z"});
    erp.orders.insert(order_id.clone(), order.clone());
    erp.transactions.insert(tx.clone(), Transaction { id: tx.clone(), order_id, status: "prepared".into() });
    json!({"transaction_id": tx, "order": order})
}

fn answer(erp: &mut Erp, method: &Method, path: &str, query: &BTreeMap<String, String>, body: &Value) -> (u16, Value) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["contacts"]) => {
            let Some(phone) = query.get("phone").filter(|p| !p.is_empty()) else {
                return error(400, "missing_phone", "phone is required");
            };
            let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
            let found: Vec<Value> = erp
                .contacts
                .iter()
                .filter(|c| digits(c["phone"].as_str().unwrap_or("")) == digits(phone))
                .cloned()
                .collect();
            (200, json!({"contacts": found}))
        }
        ("GET", ["products"]) => {
            let q = query.get("search").map(|s| s.to_lowercase()).unwrap_or_default();
            let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
            let found: Vec<Value> = erp
                .products
                .iter()
                .filter(|p| q.split_whitespace().all(|w| p["name"].as_str().unwrap_or("").to_lowercase().contains(w)))
                .take(limit)
                .cloned()
                .collect();
            (200, json!({"products": found}))
        }
        ("POST", ["orders"]) => {
            let contact = body["contact_id"].as_str().unwrap_or_default();
            if !erp.contacts.iter().any(|c| c["id"] == contact) {
                return error(422, "unknown_contact", "contact_id is not a contact");
            }
            match priced(erp, &body["lines"]) {
                Ok((lines, total)) => {
                    erp.next += 1;
                    let id = format!("O-{}", 7000 + erp.next);
                    (201, prepare(erp, id, contact, lines, total, "prepared"))
                }
                Err(e) => e,
            }
        }
        ("PATCH", ["orders", id]) => {
            let Some(order) = erp.orders.get(*id).cloned() else { return error(404, "not_found", "no such order") };
            let contact = order["contact_id"].as_str().unwrap_or_default().to_string();
            if body["status"] == "cancelled" {
                return (200, prepare(erp, id.to_string(), &contact, vec![], 0.0, "cancel_prepared"));
            }
            match priced(erp, &body["lines"]) {
                Ok((lines, total)) => (200, prepare(erp, id.to_string(), &contact, lines, total, "change_prepared")),
                Err(e) => e,
            }
        }
        ("GET", ["contacts", id, "top-products"]) => {
            if !erp.contacts.iter().any(|c| c["id"] == *id) {
                return error(404, "not_found", "no such contact");
            }
            let mut top = erp.products[0].clone();
            top["times_ordered"] = json!(12);
            (200, json!({"products": [top]}))
        }
        ("GET", ["contacts", id, "complaints"]) => {
            if !erp.contacts.iter().any(|c| c["id"] == *id) {
                return error(404, "not_found", "no such contact");
            }
            (
                200,
                json!({"complaints": [{"id": "K-12", "subject": "Damaged package", "status": "in_progress",
                "updated_at": "2026-11-30T10:00:00Z"}]}),
            )
        }
        ("GET", ["promotions"]) => (
            200,
            json!({"promotions": [{"title": "Flour week", "description": "10% off all flour",
            "valid_until": "2026-12-07", "skus": ["FLR-T550", "FLR-T850"]}]}),
        ),
        ("GET", ["orders", id]) => {
            let Some(mut order) = erp.orders.get(*id).cloned() else { return error(404, "not_found", "no such order") };
            if erp.transactions.values().any(|t| t.order_id == *id && t.status == "committed") {
                order["status"] = json!("committed");
                order["delivery_estimate"] = json!("2026-12-04");
            }
            (200, order)
        }
        ("POST", ["orders", id, "reorder"]) => {
            let Some(order) = erp.orders.get(*id).cloned() else { return error(404, "not_found", "no such order") };
            let contact = order["contact_id"].as_str().unwrap_or_default().to_string();
            let lines: Vec<Value> = order["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| json!({"sku": l["sku"], "quantity": l["quantity"]}))
                .collect();
            match priced(erp, &Value::Array(lines)) {
                Ok((lines, total)) => {
                    erp.next += 1;
                    let new_id = format!("O-{}", 7000 + erp.next);
                    (201, prepare(erp, new_id, &contact, lines, total, "prepared"))
                }
                Err(e) => e,
            }
        }
        ("POST", ["transactions", "commit"]) => {
            let tx = body["transaction_id"].as_str().unwrap_or_default();
            let Some(t) = erp.transactions.get_mut(tx) else { return error(404, "not_found", "no such transaction") };
            if t.status == "aborted" {
                return error(409, "transaction_aborted", "the transaction was aborted");
            }
            t.status = "committed".into();
            (200, json!({"transaction_id": tx, "status": "committed", "order_id": t.order_id}))
        }
        ("GET", ["transactions", id]) => match erp.transactions.get(*id) {
            Some(t) => (200, json!({"transaction_id": t.id, "status": t.status, "order_id": t.order_id})),
            None => error(404, "not_found", "no such transaction"),
        },
        _ => error(404, "not_found", "no such route"),
    }
}

async fn handle(State(st): State<St>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let query: BTreeMap<String, String> = uri.query().map(url_pairs).unwrap_or_default();
    let mut erp = st.erp.lock().unwrap();
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", st.key));
    let writes = method == Method::POST || method == Method::PATCH;
    let (status, answer) = if !authorized {
        error(401, "unauthorized", "missing or wrong API key")
    } else if writes && key.is_none() {
        error(400, "missing_idempotency_key", "POST and PATCH need an Idempotency-Key")
    } else if uri.path() == "/transactions/commit" && erp.fail_commits > 0 {
        erp.fail_commits -= 1;
        error(503, "unavailable", "the ERP is busy; try again")
    } else if let Some(done) = key.as_ref().and_then(|k| erp.applied.get(k)).cloned() {
        done
    } else {
        let result = answer(&mut erp, &method, uri.path(), &query, &body);
        if let Some(k) = &key {
            if result.0 < 500 {
                erp.applied.insert(k.clone(), result.clone());
            }
        }
        result
    };
    let is_commit = uri.path() == "/transactions/commit" && status == 200;
    let status = if is_commit && erp.lose_commit_answers > 0 {
        erp.lose_commit_answers -= 1;
        502
    } else {
        status
    };
    erp.requests.push(ErpRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        body,
        idempotency_key: key,
        status,
    });
    let answer =
        if status == 502 { json!({"error": {"code": "bad_gateway", "message": "upstream timeout"}}) } else { answer };
    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(answer)).into_response()
}

/// `a=1&b=x%20y` as pairs (percent-decoded, `+` as space).
fn url_pairs(q: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{q}")).map(|u| u.query_pairs().into_owned().collect()).unwrap_or_default()
}
