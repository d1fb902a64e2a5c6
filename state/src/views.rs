//! One module per view. Each owns its commands (`Cmd`) and outcomes (`Out`), their validation
//! and size, its apply-side mutations (on an [`crate::Overlay`]) and its read-side queries (on
//! any [`crate::Read`]). `machine` dispatches to them; `history` is the change feed they all
//! write to.

pub mod auth;
pub mod config;
pub mod events;
pub mod history;
pub mod lease;
pub mod lock;
pub mod meta;
pub mod registry;
pub mod runtime;
pub mod store;
