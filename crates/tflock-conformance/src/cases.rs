//! The contract cases. Each `pub async fn` takes a [`crate::Harness`] and asserts one
//! rule of the contract.
