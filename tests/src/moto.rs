//! A DynamoDB/SQS-speaking server for the AWS adapter tests: `moto_server` (PyPI `moto`),
//! started once per test process, or whatever `AWS_ENDPOINT_URL` already points at.
//!
//! The server runs under a small shell watchdog that stops it when the test process is
//! gone (checked every second), with a hard `timeout` as a last resort, so an aborted test
//! run never leaves a server behind for long.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static ENDPOINT: OnceLock<String> = OnceLock::new();
/// The watchdog shell; kept so its handle is not dropped while the server runs.
static SERVER: Mutex<Option<Child>> = Mutex::new(None);

/// Longest life of a server even if the watchdog never notices the test process leaving;
/// `BATON_MOTO_HARD_LIMIT_SECS` raises it for long on-demand runs.
const HARD_LIMIT_SECS: u32 = 3600;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The watchdog: `$1` = the server script, `$2` = port, `$3` = pid of the test process.
const WATCHDOG: &str = r#"
timeout "$4" python3 "$1" -H 127.0.0.1 -p "$2" &
m=$!
while kill -0 "$3" 2>/dev/null && kill -0 "$m" 2>/dev/null; do sleep 1; done
kill "$m" 2>/dev/null
wait "$m" 2>/dev/null
"#;

/// The endpoint URL of the test server. The first call starts `moto_server` on a free
/// port unless `AWS_ENDPOINT_URL` is set, then points the AWS SDK at it through the
/// environment (`AWS_ENDPOINT_URL`, dummy credentials, `us-east-1`, no instance metadata).
/// Panics with instructions when `moto_server` is not installed: these tests never skip.
pub fn endpoint() -> String {
    ENDPOINT.get_or_init(init).clone()
}

fn init() -> String {
    let url = match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => start_moto(),
    };
    // Set once, before any client of this process is built (every test calls `endpoint`
    // first, and `OnceLock` makes the others wait here).
    std::env::set_var("AWS_ENDPOINT_URL", &url);
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_PROFILE");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    url
}

/// A name no other test (of this or a parallel process) uses: tables and queues per test.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}-{nanos:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port for moto_server")
}

/// moto_server, with transactions and partition queries that cost what they touch (see the
/// script): stock moto copies the whole table per transaction, which makes long runs quadratic.
fn start_moto() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("moto_server.py");
    find_on_path("moto_server").unwrap_or_else(|| {
        panic!(
            "moto_server was not found on PATH. The AWS adapter tests need a DynamoDB/SQS-compatible \
             server: install moto (`pip install 'moto[server]'`) or set AWS_ENDPOINT_URL to a running one."
        )
    });
    let hard_limit =
        std::env::var("BATON_MOTO_HARD_LIMIT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(HARD_LIMIT_SECS);
    let log_path = std::env::temp_dir().join(format!("baton-moto-{}.log", std::process::id()));
    let mut last_error = String::new();
    // A free port can be taken between probing and binding: try a few.
    for _ in 0..3 {
        let port = free_port();
        let log = std::fs::File::create(&log_path).expect("cannot create the moto_server log file");
        let log_err = log.try_clone().expect("cannot share the moto_server log file");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("baton-moto-watchdog")
            .arg(&script)
            .arg(port.to_string())
            .arg(std::process::id().to_string())
            .arg(hard_limit.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                *SERVER.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
                return format!("http://127.0.0.1:{port}");
            }
            if let Ok(Some(status)) = child.try_wait() {
                last_error = format!("moto_server exited with {status}");
                break;
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                last_error = format!("moto_server did not listen on port {port} within {STARTUP_TIMEOUT:?}");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut log = String::new();
    let _ = std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut log));
    let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    panic!("could not start moto_server: {last_error}\n--- {} ---\n{tail}", log_path.display());
}
