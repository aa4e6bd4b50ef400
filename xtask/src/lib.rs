//! The recipes' building blocks, shared by `cargo xtask` and `cairn-bench`: installing
//! what a fresh machine lacks ([`deps`]) and building the workspace's artefacts and
//! the image ([`build`]).

pub mod build;
pub mod deps;
