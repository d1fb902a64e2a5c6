//! One module per view. Each offers apply-side mutations (on an [`crate::Overlay`]) and
//! read-side queries (on any [`crate::Read`]).

pub mod events;
pub mod store;
