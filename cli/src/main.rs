use baton::serve::{start, ServeOptions};
use baton_embedded::Db;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Baton: the AI-to-human handoff hub.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything locally: routes, worker, timers, widget and operator console.
    Serve {
        #[arg(long, env = "BATON_ADDR", default_value = "127.0.0.1:8787")]
        addr: SocketAddr,
        #[arg(long, env = "BATON_DATA", default_value = ".baton/baton.sqlite")]
        data: PathBuf,
        /// Agents file (TOML) applied at start.
        #[arg(long, env = "BATON_AGENTS")]
        agents: Option<PathBuf>,
        /// Largest accepted request body, in bytes.
        #[arg(long, env = "BATON_BODY_LIMIT", default_value_t = baton_runtime::http::DEFAULT_BODY_LIMIT)]
        body_limit: usize,
        /// Do not create the example agent on an empty store.
        #[arg(long)]
        no_example: bool,
        /// Widget requests per second allowed from one client address (burst: 6 s worth).
        #[arg(long, env = "BATON_RATE_PER_IP", default_value_t = 20.0)]
        rate_per_ip: f64,
        /// Messages per second allowed in one widget conversation (burst: 10 s worth).
        #[arg(long, env = "BATON_RATE_PER_CONVERSATION", default_value_t = 2.0)]
        rate_per_conversation: f64,
        /// The hub's public URL (e.g. a tunnel's), for links to files users send; by default
        /// the host a webhook reached.
        #[arg(long, env = "BATON_PUBLIC_URL")]
        public_url: Option<String>,
        /// Let agents call loopback, private and link-local addresses although the hub listens
        /// beyond loopback (its desks live on the same network). Always allowed when it
        /// listens on loopback only, the local-use case.
        #[arg(long, env = "BATON_ALLOW_PRIVATE_TARGETS")]
        allow_private_targets: bool,
        /// The operator key that signs in to the console (at least 16 characters); by
        /// default one is created on first start and kept in the data file.
        #[arg(long, env = "BATON_CONSOLE_KEY", hide_env_values = true)]
        console_key: Option<String>,
    },
    /// Manage agents.
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
        #[arg(long, env = "BATON_DATA", default_value = ".baton/baton.sqlite", global = true)]
        data: PathBuf,
        /// `dynamodb://TABLE` to work on the AWS deployment's table instead of the SQLite
        /// file (credentials, region and endpoint from the environment).
        #[arg(long, env = "BATON_STORE", global = true)]
        store: Option<String>,
    },
    /// Channel setup with the providers.
    Channels {
        #[command(subcommand)]
        command: ChannelsCommand,
        #[arg(long, env = "BATON_DATA", default_value = ".baton/baton.sqlite", global = true)]
        data: PathBuf,
        /// `dynamodb://TABLE` to read the agent from the AWS deployment's table (its secret
        /// references are resolved from SSM Parameter Store).
        #[arg(long, env = "BATON_STORE", global = true)]
        store: Option<String>,
        /// Read the agent from this agents file instead of a store.
        #[arg(long, global = true)]
        agents: Option<PathBuf>,
    },
    /// Desk setup with the providers.
    Desks {
        #[command(subcommand)]
        command: DesksCommand,
        #[arg(long, env = "BATON_DATA", default_value = ".baton/baton.sqlite", global = true)]
        data: PathBuf,
        /// `dynamodb://TABLE`: the agent in the AWS deployment's table (secrets go to SSM).
        #[arg(long, env = "BATON_STORE", global = true)]
        store: Option<String>,
        /// Read the agent from this agents file instead of a store (the result is printed).
        #[arg(long, global = true)]
        agents: Option<PathBuf>,
    },
    /// One end user's data, for data-protection requests: a conversation
    /// (`agent#channel#user`), on the SQLite file or the AWS deployment's table.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
        #[arg(long, env = "BATON_DATA", default_value = ".baton/baton.sqlite", global = true)]
        data: PathBuf,
        /// `dynamodb://TABLE` to work on the AWS deployment's table.
        #[arg(long, env = "BATON_STORE", global = true)]
        store: Option<String>,
    },
    /// The operator console's sign-in.
    Console {
        #[command(subcommand)]
        command: ConsoleCommand,
        #[arg(long, env = "BATON_DATA", default_value = ".baton/baton.sqlite", global = true)]
        data: PathBuf,
    },
    /// Print a conversation's events, state changes and effects (`agent#channel#user`).
    Trace {
        conversation: String,
        #[arg(long, env = "BATON_DATA", default_value = ".baton/baton.sqlite")]
        data: PathBuf,
        /// `dynamodb://TABLE` to read the AWS deployment's table.
        #[arg(long, env = "BATON_STORE")]
        store: Option<String>,
    },
    /// AWS deployment: move messages from a dead-letter queue back to their queue, once
    /// the cause of the failures is fixed and deployed.
    ///
    /// Messages are moved oldest first, one at a time (received, sent to --to, then
    /// deleted from --from); bodies and attributes are kept, and on a FIFO queue (a URL
    /// ending in `.fifo`) so are each message's group and deduplication ids. Events already
    /// applied are dropped by the worker, so a redrive never applies anything twice.
    /// Credentials, region and endpoint come from the environment, as for the AWS CLI
    /// (`AWS_PROFILE` or `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`).
    ///
    /// Example: baton redrive --from "$EVENTS_DLQ_URL" --to "$EVENTS_QUEUE_URL" --max 10
    Redrive {
        /// URL of the dead-letter queue to take messages from (stack output
        /// `EventsDeadLetterQueueUrl` or `TimersDeadLetterQueueUrl`).
        #[arg(long)]
        from: String,
        /// URL of the queue to send them to (`EventsQueueUrl` or `TimersQueueUrl`).
        #[arg(long)]
        to: String,
        /// Move at most this many messages (default: until the dead-letter queue is empty).
        #[arg(long)]
        max: Option<usize>,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Print everything kept about the conversation as JSON: session, messages, trace, desk links.
    Export { conversation: String },
    /// Delete everything kept about the conversation. Events still queued on AWS are applied
    /// afterwards: erase an idle conversation.
    Erase {
        conversation: String,
        /// Confirm: the deletion cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Print the operator key kept in the data file.
    Key {
        /// Replace it with a new one: every console session ends when `baton serve` restarts.
        #[arg(long)]
        new: bool,
    },
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// Validate and store the agents of a TOML file; new agents get a token (shown once).
    Apply {
        file: PathBuf,
        /// Accept endpoints on loopback, private or link-local addresses in the DynamoDB
        /// store (its functions refuse to call them unless BATON_ALLOW_PRIVATE_TARGETS is set).
        #[arg(long)]
        allow_private_targets: bool,
    },
    /// Check a TOML file without storing anything.
    Validate {
        file: PathBuf,
    },
    List,
    /// Issue a new access token (shown once) and revoke the others.
    RotateToken {
        agent: String,
        /// Keep the old tokens valid (revoke them later with another rotation).
        #[arg(long)]
        keep_old: bool,
    },
}

#[derive(Subcommand)]
enum ChannelsCommand {
    /// Telegram bots.
    Telegram {
        #[command(subcommand)]
        command: TelegramCommand,
    },
}

#[derive(Subcommand)]
enum DesksCommand {
    /// LiveChat.
    Livechat {
        #[command(subcommand)]
        command: LivechatCommand,
    },
}

#[derive(Subcommand)]
enum LivechatCommand {
    /// Run the OAuth authorization-code flow once and keep the agent's refresh token: in the
    /// SQLite store's agent, in SSM Parameter Store (with --store dynamodb://...), or printed
    /// (with --agents FILE).
    Authorize {
        agent: String,
        /// Loopback port of the redirect URI (http://127.0.0.1:PORT/callback), as registered
        /// in the LiveChat app.
        #[arg(long, default_value_t = 8788)]
        port: u16,
        /// SSM parameter for the refresh token (required with --store dynamodb://...).
        #[arg(long)]
        ssm_parameter: Option<String>,
    },
}

#[derive(Subcommand)]
enum TelegramCommand {
    /// Register the hub's webhook (with the agent's secret_token) via setWebhook.
    SetWebhook {
        agent: String,
        /// The public base URL (e.g. the stack output `ChannelWebhookFunctionUrl`, or `ApiUrl`)
        /// or the full webhook URL.
        url: String,
    },
    /// Remove the webhook (for example to poll with `baton serve` instead).
    DeleteWebhook { agent: String },
}

/// One agent, with its secrets resolved, from an agents file, the SQLite file or DynamoDB.
async fn load_agent_for_setup(
    id: &str,
    agents: Option<&std::path::Path>,
    store: Option<&str>,
    data: &std::path::Path,
) -> anyhow::Result<baton_core::Agent> {
    use baton_core::ports::Secrets;
    if let Some(file) = agents {
        let all = baton::config::load_file(file)?;
        return all
            .into_iter()
            .find(|a| a.id == id)
            .ok_or_else(|| anyhow::anyhow!("no agent {id:?} in {}", file.display()));
    }
    let (db, kind) = open_store(store, data).await?;
    let agent = db.get_agent(id).await?.ok_or_else(|| anyhow::anyhow!("no agent {id:?}"))?;
    let resolved = match kind {
        baton::admin::StoreKind::Sqlite => baton_runtime::PlainSecrets.resolve(&agent).await,
        baton::admin::StoreKind::Dynamo => {
            let sdk = baton_aws::sdk_config().await;
            baton_aws::SsmSecrets::new(baton_aws::aws_sdk_ssm::Client::new(&sdk)).resolve(&agent).await
        }
    };
    Ok(resolved?)
}

/// Keep a fresh LiveChat refresh token where the agent's configuration will find it.
async fn keep_livechat_token(
    agent: &str,
    token: baton_core::model::Secret,
    from_file: bool,
    store: Option<&str>,
    data: &std::path::Path,
    ssm_parameter: Option<String>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    if from_file {
        writeln!(out, "refresh token (shown once): {}", token.expose())?;
        writeln!(out, "put it in [agent.livechat] refresh_token (for example as env:NAME), then apply the file")?;
        return Ok(());
    }
    let (db, kind) = open_store(store, data).await?;
    let mut stored = db.get_agent(agent).await?.ok_or_else(|| anyhow::anyhow!("no agent {agent:?}"))?;
    let Some(cfg) = stored.livechat.as_mut() else { anyhow::bail!("agent {agent} has no [livechat] section") };
    match kind {
        baton::admin::StoreKind::Sqlite => {
            cfg.refresh_token = token;
            db.put_agent(&stored).await?;
            writeln!(out, "refresh token stored in agent {agent}'s configuration in {}", data.display())?;
        }
        baton::admin::StoreKind::Dynamo => {
            let Some(name) = ssm_parameter else {
                anyhow::bail!("with --store dynamodb://... give --ssm-parameter /baton/{agent}/livechat-refresh-token");
            };
            let sdk = baton_aws::sdk_config().await;
            baton_aws::aws_sdk_ssm::Client::new(&sdk)
                .put_parameter()
                .name(&name)
                .value(token.expose())
                .r#type(baton_aws::aws_sdk_ssm::types::ParameterType::SecureString)
                .overwrite(true)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot write SSM parameter {name}: {}", baton_aws::describe_sdk_error(&e))
                })?;
            cfg.refresh_token = baton_core::model::Secret(format!("ssm:{name}"));
            db.put_agent(&stored).await?;
            writeln!(out, "refresh token stored in SSM {name}; agent {agent} now refers to it")?;
        }
    }
    Ok(())
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("BATON_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn open_db(path: &std::path::Path) -> anyhow::Result<Arc<Db>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    Ok(Db::open(path)?)
}

/// The SQLite file, or the DynamoDB table of `dynamodb://TABLE`.
async fn open_store(
    store: Option<&str>,
    data: &std::path::Path,
) -> anyhow::Result<(Arc<dyn baton_core::ports::Store>, baton::admin::StoreKind)> {
    match store {
        None => Ok((open_db(data)?, baton::admin::StoreKind::Sqlite)),
        Some(s) => match s.strip_prefix("dynamodb://").filter(|t| !t.is_empty()) {
            Some(table) => {
                let (dynamo, _) = baton_aws::clients_from_env().await;
                let db = baton_aws::DynamoStore::new(dynamo, table);
                Ok((Arc::new(db), baton::admin::StoreKind::Dynamo))
            }
            None => anyhow::bail!("--store must look like dynamodb://TABLE, got {s:?}"),
        },
    }
}

/// mimalloc instead of glibc's malloc: under load `baton serve` spends about a sixth of its
/// CPU allocating and freeing (many small, short-lived HTTP and JSON buffers across threads);
/// with mimalloc the hub relayed 8-14% more events a second at 3,000/s offered (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    match cli.command {
        Command::Serve {
            addr,
            data,
            agents,
            body_limit,
            no_example,
            rate_per_ip,
            rate_per_conversation,
            public_url,
            allow_private_targets,
            console_key,
        } => {
            let rate_limits = baton_runtime::http::RateLimitConfig {
                per_ip_per_sec: rate_per_ip,
                per_ip_burst: (rate_per_ip * 6.0).ceil() as u32,
                per_conversation_per_sec: rate_per_conversation,
                per_conversation_burst: (rate_per_conversation * 10.0).ceil() as u32,
                ..Default::default()
            };
            let opts = ServeOptions {
                addr,
                data,
                agents_file: agents,
                body_limit,
                example_agent: !no_example,
                rate_limits,
                public_url,
                desk_probe: true,
                targets: if allow_private_targets || addr.ip().is_loopback() {
                    baton::serve::Targets::Any
                } else {
                    baton::serve::Targets::PublicOnly
                },
                console_key,
            };
            let public_only = opts.targets == baton::serve::Targets::PublicOnly;
            let running = start(opts, Arc::new(baton_runtime::clock::SystemClock)).await?;
            let a = running.addr;
            println!("Baton is running on http://{a}");
            if public_only {
                println!(
                    "  agents' endpoints must be public addresses (listening beyond loopback); \
                     --allow-private-targets to allow private ones. No example agent."
                );
            }
            println!("  try the widget:      http://{a}/");
            println!("  operator console:    http://{a}/console");
            match &running.console_key {
                (key, true) => {
                    println!("  console operator key (shown once; `baton console key` shows it again): {key}")
                }
                (_, false) => println!("  console sign-in: the operator key (`baton console key` shows it)"),
            }
            if let Some(token) = &running.example_token {
                println!("  example agent `demo` created; its access token (shown once): {token}");
            }
            tokio::signal::ctrl_c().await?;
            running.stop().await;
        }
        Command::Agents { command, data, store } => match command {
            AgentsCommand::Validate { file } => {
                let agents = baton::config::load_file(&file)?;
                println!("{}: {} agent(s) valid", file.display(), agents.len());
            }
            AgentsCommand::Apply { file, allow_private_targets } => {
                let (db, kind) = open_store(store.as_deref(), &data).await?;
                baton::admin::apply(db.as_ref(), kind, &file, allow_private_targets, &mut out).await?
            }
            AgentsCommand::List => {
                baton::admin::list(open_store(store.as_deref(), &data).await?.0.as_ref(), &mut out).await?
            }
            AgentsCommand::RotateToken { agent, keep_old } => {
                let (db, _) = open_store(store.as_deref(), &data).await?;
                baton::admin::rotate_token(db.as_ref(), &agent, keep_old, &mut out).await?
            }
        },
        Command::Channels { command, data, store, agents } => match command {
            ChannelsCommand::Telegram { command } => {
                let (id, url) = match &command {
                    TelegramCommand::SetWebhook { agent, url } => (agent, Some(url.as_str())),
                    TelegramCommand::DeleteWebhook { agent } => (agent, None),
                };
                let agent = load_agent_for_setup(id, agents.as_deref(), store.as_deref(), &data).await?;
                baton::admin::telegram_webhook(&agent, url, &mut out).await?
            }
        },
        Command::Desks { command, data, store, agents } => match command {
            DesksCommand::Livechat { command: LivechatCommand::Authorize { agent, port, ssm_parameter } } => {
                let resolved = load_agent_for_setup(&agent, agents.as_deref(), store.as_deref(), &data).await?;
                let Some(cfg) = resolved.livechat.as_ref() else {
                    anyhow::bail!("agent {agent} has no [livechat] section");
                };
                let http = baton_connectors::outbound::http_client(
                    std::time::Duration::from_secs(15),
                    baton_connectors::outbound::Targets::Any,
                );
                let token = baton::livechat_authorize::authorize(cfg, port, &mut out, &http).await?;
                keep_livechat_token(&agent, token, agents.is_some(), store.as_deref(), &data, ssm_parameter, &mut out)
                    .await?
            }
        },
        Command::Trace { conversation, data, store } => {
            let (db, _) = open_store(store.as_deref(), &data).await?;
            baton::admin::trace(db.as_ref(), &conversation, &mut out).await?
        }
        Command::Users { command, data, store } => {
            let (db, _) = open_store(store.as_deref(), &data).await?;
            match command {
                UsersCommand::Export { conversation } => {
                    baton::admin::export_user(db.as_ref(), &conversation, &mut out).await?
                }
                UsersCommand::Erase { conversation, yes } => {
                    anyhow::ensure!(yes, "erasing {conversation} cannot be undone: add --yes");
                    baton::admin::erase_user(db.as_ref(), &conversation, &mut out).await?
                }
            }
        }
        Command::Console { command: ConsoleCommand::Key { new }, data } => {
            let db = baton_embedded::Db::open(&data)?;
            let key = if new {
                Some(baton::console_login::replace_key(&db).await?)
            } else {
                baton::console_login::stored_key(&db).await?
            };
            match key {
                Some(key) => println!("{key}"),
                None => anyhow::bail!("no operator key in {} yet: `baton serve` creates one", data.display()),
            }
        }
        Command::Redrive { from, to, max } => baton::admin::redrive(&from, &to, max, &mut out).await?,
    }
    Ok(())
}
