//! The backend's Lua scripts as one Redis function library, and plain scripts for
//! other crates. Calling them (FCALL, FUNCTION LOAD when a node lacks the library;
//! EVALSHA, EVAL on `NOSCRIPT`) is [`crate::conn`]'s job.
//!
//! Each backend script (`lua/<name>.lua`) becomes the function
//! `tflock_<version>_<name>` of the library `tflock_<version>`: `prelude.lua` once,
//! then every script's body wrapped as a function of `KEYS` and `ARGV` that starts
//! with the prelude's `begin`. The prelude's functions are thus built once when the
//! library loads, not on every call (as a prepended prelude was: ~7 µs of every
//! EVALSHA, docs/benchmarks.md). `<version>` is a digest of the library's code, so
//! servers of two builds sharing a store each find their own functions.

/// A plain script, run with EVALSHA (the cluster manager's registry scripts).
pub struct Script {
    pub name: &'static str,
    pub source: &'static str,
    pub sha: String,
}

impl Script {
    /// A script from its source, as it is: other crates' scripts (the cluster
    /// manager's registry), run with [`crate::RedisBackend::eval`].
    pub fn new(name: &'static str, source: &'static str) -> Self {
        Script {
            name,
            source,
            sha: redis::Script::new(source).get_hash().to_string(),
        }
    }
}

/// One of the backend's scripts: a function of the library.
pub struct Function {
    /// The script's file name, for errors.
    pub name: &'static str,
    /// The function's name in Redis: `tflock_<version>_<script>`.
    pub function: String,
}

/// The library all of [`Scripts`]' functions live in.
pub struct Library {
    /// `tflock_<version>`.
    pub name: String,
    /// The `FUNCTION LOAD` source.
    pub source: String,
}

const PRELUDE: &str = include_str!("../lua/prelude.lua");

macro_rules! scripts {
    ($($field:ident => $file:literal),* $(,)?) => {
        /// Every script of the backend, and their library.
        pub struct Scripts {
            pub library: Library,
            $(pub $field: Function,)*
        }

        impl Scripts {
            pub fn load() -> Self {
                let bodies: &[(&'static str, &'static str)] = &[
                    $((stringify!($field), include_str!(concat!("../lua/", $file))),)*
                ];
                let (library, mut functions) = build(bodies);
                let mut next = |file: &'static str| Function {
                    name: file,
                    function: functions.next().expect("one function per script"),
                };
                Scripts {
                    library,
                    $($field: next($file),)*
                }
            }
        }
    };
}

/// The library's source from the scripts' bodies (in order), and each one's
/// function name.
fn build(bodies: &[(&str, &str)]) -> (Library, std::vec::IntoIter<String>) {
    let mut code = String::from(PRELUDE);
    for (field, body) in bodies {
        code.push_str(&format!(
            "\nlocal function script_{field}(KEYS, ARGV)\nbegin(KEYS, ARGV)\n{body}\nend\n"
        ));
    }
    let digest = redis::Script::new(&code).get_hash().to_string();
    let name = format!("tflock_{}", &digest[..12]);
    let mut source = format!("#!lua name={name}\n{code}\n");
    let mut functions = Vec::with_capacity(bodies.len());
    for (field, _) in bodies {
        let function = format!("{name}_{field}");
        source.push_str(&format!(
            "redis.register_function('{function}', script_{field})\n"
        ));
        functions.push(function);
    }
    (Library { name, source }, functions.into_iter())
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
    user_queue => "user_queue.lua",
    stats => "stats.lua",
    export => "export.lua",
    import => "import.lua",
    generation => "generation.lua",
    upgrade => "upgrade.lua",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_function_per_script_in_one_versioned_library() {
        let s = Scripts::load();
        assert!(
            s.library
                .source
                .starts_with(&format!("#!lua name={}\n", s.library.name))
        );
        assert_eq!(s.try_lock.function, format!("{}_try_lock", s.library.name));
        assert_eq!(s.try_lock.name, "try_lock.lua");
        assert_eq!(
            s.library.source.matches("redis.register_function(").count(),
            19
        );
        // The version is the code's: the same build always names the same library.
        assert_eq!(Scripts::load().library.name, s.library.name);
    }
}
