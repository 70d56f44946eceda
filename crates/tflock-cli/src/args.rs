//! The command line: every command and flag, as clap derive types.
//!
//! Names follow the spec's Operations and Migration Guide sections with `atlantis`
//! read as `tflock` (`tflock locks list --backend=redis`, `tflock locks unlock
//! --project=myorg/myrepo --workspace=default --force`, ...). `--project` is the
//! repository, as in the spec; `--path` and `--project-name` complete the resource.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use tflock_core::{Priority, WaitSpec};

/// Fair, fenced, distributed locks for Terraform automation.
#[derive(Debug, Parser)]
#[command(
    name = "tflock",
    version,
    about = "Fair, fenced, distributed locks for Terraform automation",
    after_help = "Exit codes: 0 success, 1 error, 2 usage or configuration, \
                  3 not acquired or timed out, 4 backend unavailable."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The config file. Default: $TFLOCK_CONFIG, else ./tflock.yaml when present.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A tflock server to work through (e.g. http://127.0.0.1:4141). Without it the
    /// commands open the configured backend directly.
    #[arg(long, global = true, env = "TFLOCK_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Bearer token for the server (the API token, or the admin token for admin
    /// commands). Prefer the environment variable: flags show in the process list.
    #[arg(
        long,
        global = true,
        env = "TFLOCK_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Open this backend directly from the configuration (overrides
    /// enhanced_locking.backend and --server). For `tflock server`: the backend to serve.
    #[arg(long, global = true, value_enum, value_name = "BACKEND")]
    pub backend: Option<BackendArg>,

    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,

    /// Shorthand for --output json.
    #[arg(long, global = true)]
    pub json: bool,
}

impl GlobalArgs {
    /// The output format chosen (`--json` wins over the default, `--output` over both).
    pub fn format(&self) -> OutputFormat {
        match (self.output, self.json) {
            (Some(f), _) => f,
            (None, true) => OutputFormat::Json,
            (None, false) => OutputFormat::Table,
        }
    }
}

/// A backend named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The single-file store.
    Embedded,
    /// Redis (standalone, Sentinel or Cluster, as configured).
    Redis,
    /// The spec's name for the single-node store: read as `embedded`.
    Boltdb,
}

impl BackendArg {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendArg::Embedded => "embedded",
            BackendArg::Redis => "redis",
            BackendArg::Boltdb => "boltdb",
        }
    }
}

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human tables (the default).
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP lock server on the configured backend.
    Server(ServerArgs),
    /// Lock and queue operations.
    #[command(subcommand)]
    Locks(LocksCommand),
    /// Run a command while holding a lock: acquire (waiting in the queue), keep the
    /// lease refreshed, release when the command exits.
    Run(RunArgs),
    /// The backend's health: circuit breaker, health and performance metrics.
    Health,
    /// The servers sharing this store (Redis): who they are and who leads.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Show, check and edit the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Store maintenance on the configured Redis, opened directly (not through a
    /// server).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Terraform states kept by the server's http state backend (`/tf/NAME`):
    /// list, show, pull, roll back. Through a server only.
    #[command(subcommand)]
    State(StateCommand),
}

/// `tflock server`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to listen on (host:port); enhanced_locking.server.listen. Without an
    /// API token only a loopback address is accepted.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// The embedded store's file (enhanced_locking.embedded.path); its directory is
    /// created when missing.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,

    /// Bearer token for mutating calls (enhanced_locking.server.api_token). Prefer
    /// ATLANTIS_ENHANCED_LOCKING_SERVER_API_TOKEN: flags show in the process list.
    #[arg(long, value_name = "TOKEN")]
    pub api_token: Option<String>,

    /// Bearer token for admin calls (enhanced_locking.server.admin_token).
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
}

/// A resource: the spec's `--project=myorg/myrepo --workspace=default`.
#[derive(Debug, Clone, Args)]
pub struct ResourceArgs {
    /// The repository, e.g. myorg/myrepo (the spec's --project).
    #[arg(long, value_name = "REPO")]
    pub project: String,
    /// The Terraform workspace.
    #[arg(long, default_value = "default")]
    pub workspace: String,
    /// The project's directory in the repository.
    #[arg(long, default_value = ".")]
    pub path: String,
    /// The Atlantis project name (empty when the project has none).
    #[arg(long, default_value = "", value_name = "NAME")]
    pub project_name: String,
}

/// Who asks for a lock.
#[derive(Debug, Clone, Args)]
pub struct OwnerArgs {
    /// The owner string. Default: REPO#PULL with --pull, else USER@HOST:PID.
    #[arg(long)]
    pub owner: Option<String>,
    /// The VCS user (default: $USER).
    #[arg(long)]
    pub user: Option<String>,
    /// The pull request number.
    #[arg(long, value_name = "N")]
    pub pull: Option<u64>,
    /// A free note shown with the lock.
    #[arg(long)]
    pub note: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum LocksCommand {
    /// Active locks, ordered by key.
    List {
        /// Only this repository.
        #[arg(long)]
        repo: Option<String>,
        /// Only this owner.
        #[arg(long)]
        owner: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
    },
    /// One resource's lock (exit 1 when it is not locked).
    Get(ResourceArgs),
    /// Take a lock; prints the lease id. Exit 3 when not acquired or timed out.
    #[command(group(ArgGroup::new("how").args(["wait", "reserve"])))]
    Acquire(AcquireArgs),
    /// Release a lock: by its lease id (--lease-id or --lease-file), or --force (admin).
    #[command(group(ArgGroup::new("auth").args(["force", "lease_id", "lease_file"]).required(true)))]
    Unlock {
        #[command(flatten)]
        resource: ResourceArgs,
        /// Release whoever holds it (admin).
        #[arg(long)]
        force: bool,
        /// With --force: release only if the lock is still held with this fencing
        /// token (checked in the same atomic step; exit 1, not_owner, when it changed
        /// hands).
        #[arg(long, value_name = "N")]
        expect_token: Option<u64>,
        /// The holder's lease id.
        #[arg(long, value_name = "L")]
        lease_id: Option<String>,
        /// Read the lease id from this file (written by `locks acquire --lease-file`);
        /// the file is removed once the lock is released.
        #[arg(long, value_name = "PATH")]
        lease_file: Option<PathBuf>,
    },
    /// Release every lock and queue entry of one pull request (admin).
    UnlockPull {
        /// The repository, e.g. myorg/myrepo.
        #[arg(long, value_name = "REPO")]
        project: String,
        /// The pull request number.
        #[arg(long, value_name = "N")]
        pull: u64,
    },
    /// Extend a lease: its expiry becomes now + TTL.
    Refresh {
        #[command(flatten)]
        resource: ResourceArgs,
        #[arg(long, value_name = "L")]
        lease_id: String,
        #[arg(long, value_parser = parse_duration, value_name = "D")]
        ttl: Duration,
    },
    /// Give a lock to another owner (new lease id and fencing token); prints the new
    /// lease id.
    #[command(group(ArgGroup::new("auth").args(["force", "lease_id"]).required(true)))]
    Transfer {
        #[command(flatten)]
        resource: ResourceArgs,
        /// The holder's lease id.
        #[arg(long, value_name = "L")]
        lease_id: Option<String>,
        /// Transfer whoever holds it (admin).
        #[arg(long)]
        force: bool,
        /// The new owner.
        #[arg(long, value_name = "O")]
        to_owner: String,
        /// The new owner's VCS user.
        #[arg(long, value_name = "U")]
        to_user: Option<String>,
        /// The new owner's pull request.
        #[arg(long, value_name = "N")]
        to_pull: Option<u64>,
    },
    /// A resource's holder and queue in grant order.
    Queue(ResourceArgs),
    /// A user's queue entries on every resource.
    UserQueue {
        #[arg(long, value_name = "U")]
        user: String,
    },
    /// Remove a queue entry. With --project (and --workspace, --path,
    /// --project-name), only if the entry still waits in that resource's queue.
    Cancel {
        /// The entry id (from `locks queue` or `locks acquire --reserve`).
        entry: String,
        /// The repository of the resource whose queue the entry must be in.
        #[arg(long, value_name = "REPO")]
        project: Option<String>,
        /// With --project: the Terraform workspace (default `default`).
        #[arg(long, requires = "project")]
        workspace: Option<String>,
        /// With --project: the project's directory (default `.`).
        #[arg(long, requires = "project")]
        path: Option<String>,
        /// With --project: the Atlantis project name (default empty).
        #[arg(long, value_name = "NAME", requires = "project")]
        project_name: Option<String>,
    },
    /// Write every lock, queue entry and fencing token as JSON to stdout (admin).
    Export {
        #[arg(long, value_enum, default_value = "json")]
        format: SnapshotFormat,
    },
    /// Load a file written by `locks export`, or Atlantis's locks (--from-boltdb,
    /// --from-atlantis-redis) (admin). Never lowers a fencing token.
    #[command(group(ArgGroup::new("atlantis").args(["from_boltdb", "from_atlantis_redis"])))]
    Import {
        #[arg(long, value_enum, default_value = "json")]
        format: SnapshotFormat,
        /// The file (`-` for stdin).
        #[arg(required_unless_present_any = ["from_boltdb", "from_atlantis_redis"])]
        file: Option<PathBuf>,
        /// Import the locks of a copy of Atlantis's atlantis.db (read-only) instead.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["file", "from_atlantis_redis"])]
        from_boltdb: Option<PathBuf>,
        /// Import the locks in Atlantis's Redis (redis://[:PASSWORD@]HOST:PORT/DB,
        /// read-only) instead.
        #[arg(long, value_name = "URL", conflicts_with = "file")]
        from_atlantis_redis: Option<String>,
        /// With --from-*: imported locks expire this long from now (default:
        /// redis.default_ttl).
        #[arg(long, value_parser = parse_duration, value_name = "D", requires = "atlantis")]
        ttl: Option<Duration>,
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace locks held under another lease instead of reporting a conflict.
        #[arg(long)]
        overwrite: bool,
    },
    /// Self-test on a scratch resource: acquire, a queued waiter, hand-off, refresh,
    /// TTL expiry, unlock, clean-up, each with its latency.
    Test,
}

/// `tflock locks acquire`.
#[derive(Debug, Clone, Args)]
pub struct AcquireArgs {
    #[command(flatten)]
    pub resource: ResourceArgs,
    #[command(flatten)]
    pub owner: OwnerArgs,
    /// low, normal, high or critical.
    #[arg(long, default_value = "normal", value_parser = parse_priority)]
    pub priority: Priority,
    /// Lease TTL (default: the configured default_ttl).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    pub ttl: Option<Duration>,
    /// Wait in the queue up to D (or `default`) when the lock is held.
    #[arg(long, value_parser = parse_wait, value_name = "D")]
    pub wait: Option<WaitSpec>,
    /// Take a place in the queue and return at once (prints the entry id).
    #[arg(long)]
    pub reserve: bool,
    /// Secret idempotency key: a retry with the same id is answered from the present
    /// state of the grant it made, and proves holding that grant for a re-lock. Treat
    /// it like a lease id: it is never shown back.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    /// Re-lock proof: the lease id this owner already holds the lock under. Without a
    /// proof a re-lock by the same owner is refused (`held_by_owner`).
    #[arg(long, value_name = "L", conflicts_with = "lease_file")]
    pub lease_id: Option<String>,
    /// Keep the lease in this file: when it exists its lease id is sent as the re-lock
    /// proof; on a grant the lease id is written to it (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub lease_file: Option<PathBuf>,
}

/// `tflock run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub resource: ResourceArgs,
    #[command(flatten)]
    pub owner: OwnerArgs,
    #[arg(long, default_value = "normal", value_parser = parse_priority)]
    pub priority: Priority,
    /// How long to wait in the queue (default: the configured default_timeout).
    #[arg(long, value_parser = parse_wait, value_name = "D")]
    pub wait: Option<WaitSpec>,
    /// Lease TTL; the lease is refreshed well before it runs out.
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    pub ttl: Option<Duration>,
    /// When the lease is lost, only say so; leave the command running.
    #[arg(long)]
    pub keep_running_on_lease_loss: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The snapshot file format (the spec's `--format=json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotFormat {
    Json,
}

/// `tflock admin ...`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum AdminCommand {
    /// Bring a Redis store written by an older tflock to this build's key layout,
    /// in place, keeping every lock, queue entry and fencing token (a server does
    /// it by itself when it starts; this does it ahead of time, or shows what it
    /// would move). Stop servers of older builds first: once upgraded, the store
    /// refuses their calls.
    UpgradeLayout {
        /// Count what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `tflock cluster ...`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ClusterCommand {
    /// Every live server, the leader and its epoch (`GET /api/cluster`).
    Status,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration file's JSON Schema.
    Schema,
    /// Check a configuration file (default: the one in use) with the environment.
    Validate { file: Option<PathBuf> },
    /// Every effective setting with where it came from (secrets masked).
    Show,
    /// Set KEY (e.g. enhanced_locking.legacy_fallback) to VALUE in the config file,
    /// leaving the rest of the file as it was.
    Set { key: String, value: String },
}

/// `tflock state ...`: the states of Terraform's and OpenTofu's `http` backend at
/// `/tf/NAME` (docs/terraform.md).
#[derive(Debug, Subcommand)]
#[command(
    after_help = "States are kept only by a tflock server's Terraform backend, so \
                  these commands always work through a server (--server or TFLOCK_SERVER, \
                  else the configured server.listen). Force-unlock is Terraform's own: \
                  `terraform force-unlock -force ID` with the admin token as the backend's \
                  password (or TF_HTTP_PASSWORD); Terraform sends no lock ID, so any ID \
                  releases whatever holds the state's lock."
)]
pub enum StateCommand {
    /// Every state: current version, serial, size, when written, who holds its lock.
    List,
    /// One state and its kept versions, newest first.
    Show {
        /// The state name (the path after /tf/ in the backend's address).
        name: String,
    },
    /// Write a state's document to stdout (or --out FILE), byte for byte.
    Pull {
        /// The state name.
        name: String,
        /// A kept version instead of the current one (see `tflock state show`).
        #[arg(long, value_name = "V")]
        version: Option<u64>,
        /// Write to this file (mode 0600: a state holds secrets) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Bring a kept version back as a new version, its serial above every serial
    /// stored, so Terraform takes it as newer (admin token). Refused while the state is
    /// locked (exit 3).
    Rollback {
        /// The state name.
        name: String,
        /// The kept version to bring back.
        #[arg(long, value_name = "V")]
        version: u64,
    },
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration such as 30s, 5m, 1h: {e}"))
}

fn parse_wait(s: &str) -> Result<WaitSpec, String> {
    s.parse()
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    s.parse()
}
