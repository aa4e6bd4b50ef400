//! The `cairn` node: PID 1 of a Cairn machine, or the same node role hosted on an
//! existing Linux (`cairn node`).
//!
//! Start with [`boot`]: the phases a node goes through, in one file. Then:
//! - [`node`]: boot → ready or maintenance → shutdown, for both kinds of host;
//! - [`host`]: the seam behind which all PID 1-only actions live;
//! - [`supervisor`] and [`reaper`]: services with restart backoff, and child reaping;
//! - [`power`] and [`shutdown`]: what asks to stop, and the orderly way to stop;
//! - [`mounts`], [`modules`], [`config_source`], [`cmdline`]: the pieces of boot;
//! - [`sys`]: the kernel calls behind a trait, faked in unit tests;
//! - [`pid1`]: the entry point that must never return or panic.
//!
//! Containers, the cluster store and the network reconciler live in their own crates.

#![deny(unsafe_code)]

pub mod api_exec;
pub mod api_runtime;
pub mod api_server;
pub mod boot;
pub mod cmdline;
pub mod config_manager;
pub mod config_source;
pub mod host;
pub mod internal;
mod ioctl;
pub mod kmsg;
pub mod live;
pub mod logging;
pub mod maintenance;
pub mod modules;
pub mod mounts;
pub mod node;
pub mod phase;
pub mod pid1;
pub mod power;
pub mod reaper;
pub mod services;
pub mod shutdown;
pub mod state_disk;
pub mod supervisor;
pub mod sys;

pub use cairn_api::error_chain;
