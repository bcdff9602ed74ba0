//! End-to-end test harness for crust.
//!
//! Everything here drives real parts: a `crustd` child process on a private root,
//! state dir and socket, real runc, and a real `docker-registry` on a loopback port
//! holding images built from `busybox-static`. Tests talk to crustd only through the
//! CRI gRPC API over its unix socket, the way kubelet and crictl do.
//!
//! A test is an `async fn(&mut TestEnv) -> anyhow::Result<()>` handed to [`run`],
//! which skips it (with a note) when the host cannot run it, bounds it with a
//! timeout and tears down every process, mount and cgroup it made.
//!
//! The tests themselves are one binary, `tests/e2e` (a module per area, so
//! tests are named `<module>::<test>`), which starts the shared registry and
//! builds the images once for all of them. Run with `cargo build --workspace
//! && cargo test -p crust-e2e -- --test-threads=4` as root, or one area with
//! `cargo test -p crust-e2e --test e2e -- <module>::`. Environment knobs:
//! - `CRUST_BIN_DIR`: where `crustd` and `crust-shim` are (default: the cargo
//!   target dir of the test executable);
//! - `CRUST_E2E_TMPDIR`: parent of the per-test directories (default `$TMPDIR`
//!   or `/tmp`); failed tests' crustd logs are kept in `crust-e2e-logs/` there;
//! - `CRUST_E2E_KEEP`: keep per-test directories (mounts are still removed);
//! - `CRUST_E2E_LOG_LEVEL`: crustd's `--log-level` (an EnvFilter directive);
//! - `CRUST_E2E_TEST_TIMEOUT`: seconds a test body may take (default 120).

#![warn(missing_docs)]

pub mod assertions;
pub mod bench;
pub mod binaries;
pub mod cgroups;
pub mod cleanup;
pub mod conformance;
pub mod crafted;
pub mod cri_client;
pub mod cri_log;
pub mod daemon;
pub mod env;
pub mod fake_cni;
pub mod fake_registry;
pub mod filters;
pub mod fixtures;
pub mod image_builder;
pub mod installer_image;
pub mod mountinfo;
pub mod network;
pub mod pod_config;
pub mod processes;
pub mod prometheus;
pub mod raw_grpc;
pub mod registry;
pub mod requirements;
pub mod secured_registry;
pub mod streaming;
pub mod tls;
pub mod unique;
pub mod wait;

pub use cri_client::{CriClient, ExecOutput, Streams};
pub use env::{Pod, TestEnv, run, run_with_timeout};
pub use fixtures::TestImages;
/// The CRI v1 protobuf types, re-exported so tests need no direct k8s-cri import.
pub use k8s_cri::v1 as cri;
