//! The Lua scripts, each with `prelude.lua` prepended at build time, and their SHA1s.
//! Calling them (EVALSHA, and EVAL on `NOSCRIPT`) is [`crate::conn`]'s job.

/// One script: its source (prelude included) and its SHA1 for EVALSHA.
pub struct Script {
    pub name: &'static str,
    pub source: &'static str,
    pub sha: String,
}

impl Script {
    /// A script from its source. The backend's own scripts get `prelude.lua` in front;
    /// other crates (the cluster manager's registry scripts) pass theirs as they are
    /// and run them with [`crate::RedisBackend::eval`].
    pub fn new(name: &'static str, source: &'static str) -> Self {
        Script {
            name,
            source,
            sha: redis::Script::new(source).get_hash().to_string(),
        }
    }
}

macro_rules! scripts {
    ($($field:ident => $file:literal),* $(,)?) => {
        /// Every script of the backend.
        pub struct Scripts {
            $(pub $field: Script,)*
        }

        impl Scripts {
            pub fn load() -> Self {
                Scripts {
                    $($field: Script::new(
                        $file,
                        concat!(
                            include_str!("../lua/prelude.lua"),
                            "\n",
                            include_str!(concat!("../lua/", $file)),
                        ),
                    ),)*
                }
            }
        }
    };
}

scripts! {
    try_lock => "try_lock.lua",
    wait_end => "wait_end.lua",
    abandon => "abandon.lua",
    unlock => "unlock.lua",
    refresh => "refresh.lua",
    transfer => "transfer.lua",
    cancel => "cancel.lua",
    unlock_pull => "unlock_pull.lua",
    sweep => "sweep.lua",
    fence => "fence.lua",
    rollback => "rollback.lua",
    get_lock => "get_lock.lua",
    queue_status => "queue_status.lua",
    list => "list.lua",
    user_queue => "user_queue.lua",
    stats => "stats.lua",
    export => "export.lua",
    import => "import.lua",
    generation => "generation.lua",
}
