//! The contract cases. Each `pub async fn` takes a [`crate::Harness`] and asserts one
//! rule of the contract (`docs/contract.md`). They are grouped by
//! topic in the modules below and re-exported here, so a case is always
//! `tflock_conformance::cases::<name>`.

mod events;
mod lease;
mod query;
mod queue;
mod safety;
mod safety_more;
mod snapshot;
mod try_lock;
mod unlock;
mod validation;

pub use events::*;
pub use lease::*;
pub use query::*;
pub use queue::*;
pub use safety::*;
pub use safety_more::*;
pub use snapshot::*;
pub use try_lock::*;
pub use unlock::*;
pub use validation::*;
