//! The `orderflow-api` command line: serve (default), migrate, manage clients and operators,
//! grow partitions, grant direct producers.

use crate::startup::{ApiConfig, Application};
use anyhow::Context;
use clap::{Parser, Subcommand};
use orderflow_domain::ClientId;
use orderflow_runtime::config::ExposeSecret;
use orderflow_storage::{self as db, clients, operators, producers};
use std::io::Read;

/// orderflow's HTTP API: accepts order commands, records and enqueues them, serves their status.
#[derive(Parser, Debug)]
#[command(name = "orderflow-api", version)]
pub struct Cli {
    #[command(flatten)]
    pub config: ApiConfig,

    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

#[derive(Subcommand, Debug)]
pub enum CliCommand {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage API clients.
    #[command(subcommand)]
    Client(ClientCommand),
    /// The partition count: show it, or grow it online.
    #[command(subcommand)]
    Partitions(PartitionsCommand),
    /// Which broker users may publish commands straight to the queue, for which clients.
    #[command(subcommand)]
    Producer(ProducerCommand),
    /// The people who sign in to the dashboard.
    #[command(subcommand)]
    Operator(OperatorCommand),
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Create an operator; the password is read from standard input (its first line).
    Create {
        /// The name they sign in with: lowercase letters, digits, `.`, `_`, `-` (1–64).
        #[arg(long)]
        name: String,
        /// viewer: reads everything; operator: also acts on orders; admin: also stock, redrive
        /// and operators.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Read the password from standard input (required: a password never goes on a
        /// command line, where `ps` and shell histories see it).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Set a live operator's password (read from standard input, its first line); their
    /// sessions end.
    SetPassword {
        #[arg(long)]
        name: String,
        /// Read the password from standard input (required, as for `create`).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Print every operator: name, role, live or disabled, live sessions, created (tab-separated).
    List,
    /// Disable an operator: their sessions end, and with them every live feed they hold.
    Disable {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProducerCommand {
    /// Let a broker user publish commands for a client. Its messages must carry the `user_id`
    /// property (RabbitMQ checks it against the user of the publishing connection).
    Grant {
        /// The RabbitMQ user the producer connects as.
        #[arg(long)]
        broker_user: String,
        /// The client its commands act for.
        #[arg(long)]
        client_id: uuid::Uuid,
    },
    /// Take a grant back: the worker dead-letters the broker user's next commands for the client
    /// (`producer_not_granted`); commands already recorded stay.
    Revoke {
        #[arg(long)]
        broker_user: String,
        #[arg(long)]
        client_id: uuid::Uuid,
    },
    /// Print every grant: broker user, client id, client name, when granted (tab-separated).
    List,
}

#[derive(Subcommand, Debug)]
pub enum PartitionsCommand {
    /// Print the partition count and the counts it grew from.
    Show,
    /// Double the partition count while traffic flows: each partition p splits into p and p + N.
    /// Declares the new queues, then switches every API and worker to the new count.
    Grow,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Create a client and print its API key (alone, on standard output; shown only once).
    Create {
        /// A name for people reading logs and dashboards.
        #[arg(long)]
        name: String,
        /// May manage inventory.
        #[arg(long)]
        admin: bool,
        /// This client's own rate limit, requests per second (default: the API's).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate_limit_per_second: Option<u32>,
        /// This client's own burst (default: its rate limit per second).
        #[arg(long, requires = "rate_limit_per_second", value_parser = clap::value_parser!(u32).range(1..))]
        rate_limit_burst: Option<u32>,
    },
    /// Revoke a client's key: every API refuses it as soon as the change reaches it (about a
    /// millisecond; at once with ORDERFLOW_KEY_CACHE_SECS=0).
    Revoke {
        /// The client's id.
        #[arg(long)]
        id: uuid::Uuid,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let common = &cli.config.common;
    match cli.command.unwrap_or(CliCommand::Serve) {
        CliCommand::Serve => {
            let shutdown = orderflow_runtime::shutdown::on_signal();
            Application::build(cli.config, shutdown)
                .await?
                .run_until_stopped()
                .await
        }
        CliCommand::Migrate => {
            let pool = db::pool(common.database_url.expose_secret(), 1)?;
            db::MIGRATOR
                .run(&pool)
                .await
                .context("applying migrations")?;
            eprintln!("migrations applied");
            Ok(())
        }
        CliCommand::Client(ClientCommand::Create {
            name,
            admin,
            rate_limit_per_second,
            rate_limit_burst,
        }) => {
            let pool = db::pool(common.database_url.expose_secret(), 1)?;
            db::check_schema(&pool).await?;
            let rate_limit = rate_limit_per_second.map(|per_second| clients::RateLimit {
                per_second,
                burst: rate_limit_burst.unwrap_or(per_second),
            });
            let (client, key) = clients::create_with_limit(&pool, &name, admin, rate_limit).await?;
            eprintln!(
                "created client {} ({name}{})",
                client.id,
                if admin { ", admin" } else { "" }
            );
            println!("{key}");
            Ok(())
        }
        CliCommand::Partitions(PartitionsCommand::Show) => {
            let layout = crate::partitions::show(common).await?;
            println!(
                "{} partitions (generation {}; counts so far: {:?})",
                layout.partitions(),
                layout.generation,
                layout.counts()
            );
            Ok(())
        }
        CliCommand::Partitions(PartitionsCommand::Grow) => {
            let (before, after) = crate::partitions::grow(common).await?;
            eprintln!(
                "partitions grown from {} to {} (generation {})",
                before.partitions(),
                after.partitions(),
                after.generation
            );
            println!("{}", after.partitions());
            Ok(())
        }
        CliCommand::Producer(command) => producer(common, command).await,
        CliCommand::Operator(command) => operator(common, command).await,
        CliCommand::Client(ClientCommand::Revoke { id }) => {
            let pool = db::pool(common.database_url.expose_secret(), 1)?;
            if clients::revoke(&pool, ClientId(id)).await? {
                eprintln!("revoked client {id}");
                Ok(())
            } else {
                anyhow::bail!("no live client {id}")
            }
        }
    }
}

async fn producer(
    common: &orderflow_runtime::config::CommonConfig,
    command: ProducerCommand,
) -> anyhow::Result<()> {
    let pool = db::pool(common.database_url.expose_secret(), 1)?;
    db::check_schema(&pool).await?;
    match command {
        ProducerCommand::Grant {
            broker_user,
            client_id,
        } => {
            let broker_user = checked_broker_user(&broker_user)?;
            match producers::grant(&pool, broker_user, ClientId(client_id)).await? {
                producers::Granted::Granted => {
                    eprintln!("broker user {broker_user} may publish for client {client_id}")
                }
                producers::Granted::AlreadyGranted => eprintln!(
                    "broker user {broker_user} already may publish for client {client_id}"
                ),
                producers::Granted::UnknownClient => anyhow::bail!("no live client {client_id}"),
            }
            Ok(())
        }
        ProducerCommand::Revoke {
            broker_user,
            client_id,
        } => {
            if producers::revoke(&pool, &broker_user, ClientId(client_id)).await? {
                eprintln!("broker user {broker_user} may no longer publish for client {client_id}");
                Ok(())
            } else {
                anyhow::bail!("broker user {broker_user} has no grant for client {client_id}")
            }
        }
        ProducerCommand::List => {
            for grant in producers::list(&pool).await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    grant.broker_user,
                    grant.client_id,
                    grant.client_name,
                    grant.granted_at.to_rfc3339()
                );
            }
            Ok(())
        }
    }
}

async fn operator(
    common: &orderflow_runtime::config::CommonConfig,
    command: OperatorCommand,
) -> anyhow::Result<()> {
    let pool = db::pool(common.database_url.expose_secret(), 1)?;
    db::check_schema(&pool).await?;
    match command {
        OperatorCommand::Create { name, role, .. } => {
            if !operators::valid_name(&name) {
                anyhow::bail!(
                    "--name must be 1–64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
                );
            }
            let role = operators::Role::parse(&role).context("--role")?;
            let hash = password_from_stdin().await?;
            match operators::create(&pool, &name, role, &hash).await? {
                operators::Created::Created(id) => {
                    eprintln!("created operator {name} ({role}, id {id})");
                    Ok(())
                }
                operators::Created::NameTaken => {
                    anyhow::bail!("an operator named {name} exists already")
                }
            }
        }
        OperatorCommand::SetPassword { name, .. } => {
            let hash = password_from_stdin().await?;
            if operators::set_password(&pool, &name, &hash).await? {
                eprintln!("password of operator {name} set; their sessions have ended");
                Ok(())
            } else {
                anyhow::bail!("no live operator named {name}")
            }
        }
        OperatorCommand::List => {
            for o in operators::list(&pool).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    o.name,
                    o.role,
                    o.disabled_at.map_or("live".to_owned(), |at| format!(
                        "disabled {}",
                        at.to_rfc3339()
                    )),
                    o.live_sessions,
                    o.created_at.to_rfc3339()
                );
            }
            Ok(())
        }
        OperatorCommand::Disable { name } => {
            if operators::disable(&pool, &name).await? {
                eprintln!("disabled operator {name}; their sessions have ended");
                Ok(())
            } else {
                anyhow::bail!("no live operator named {name}")
            }
        }
    }
}

/// The first line of standard input, hashed as a password.
async fn password_from_stdin() -> anyhow::Result<String> {
    let mut input = String::new();
    std::io::stdin()
        .take(crate::operators::MAX_PASSWORD_BYTES as u64 + 2)
        .read_to_string(&mut input)
        .context("reading the password from standard input")?;
    let password = input.lines().next().unwrap_or_default().to_owned();
    tokio::task::spawn_blocking(move || crate::operators::hash_password(&password))
        .await?
        .map_err(anyhow::Error::msg)
}

/// A RabbitMQ user name as the `user_id` property can carry it: 1–255 bytes (an AMQP short
/// string), no control characters.
fn checked_broker_user(name: &str) -> anyhow::Result<&str> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        anyhow::bail!("--broker-user must be 1–255 bytes without control characters");
    }
    Ok(name)
}
