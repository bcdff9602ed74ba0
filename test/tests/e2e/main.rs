//! The end-to-end suite: one test binary, so one shared `docker-registry` and
//! one build and push of the test images serve every test (see
//! `crust_e2e::registry` and `crust_e2e::fixtures`); tests that need a registry
//! of their own (authentication, TLS, hostile or scripted registries) still
//! start it themselves.
//!
//! Each module is one area, and its tests are named `<module>::<test>`, so a
//! module runs alone with e.g. `cargo test -p crust-e2e --test e2e --
//! networking::`. The conformance tests (`crictl`, `critest`, `kubelet`) and
//! the soak (`load::soak_with_crustd_killed_at_random`) are ignored here;
//! `make conformance` and `make soak` run them with `--ignored` and a filter.

mod create_retry;
mod crictl;
mod critest;
mod deadlines;
mod errors;
mod events;
mod handlers;
mod harness_selftest;
mod hostile_images;
mod hostile_requests;
mod image_edge;
mod image_formats;
mod image_service;
mod images;
mod install;
mod installer_image;
mod kubelet;
mod lifecycle;
mod load;
mod logs;
mod metrics;
mod network_leaks;
mod networking;
mod oom;
mod pid_namespace;
mod pod_environment;
mod registries;
mod resources;
mod restart;
mod restart_edge;
mod security;
mod stats;
mod stopping;
mod streaming;
mod user_namespaces;
