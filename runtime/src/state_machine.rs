//! State-machine tests of the lifecycle on the fake host: for RunPodSandbox,
//! CreateContainer, StartContainer and their removals, a failure injected at
//! every host call leaves exactly the objects a retry can finish, and the
//! retry finishes them; stop and remove are idempotent; a retried create is
//! handed the first result; a crash between any two calls is recovered from.
//! No root needed: everything outside the runtime's own files is faked.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::container::config::{ContainerConfig, Mount};
use crate::container::{ContainerFilter, ContainerState};
use crate::host::fake::{FakeHost, Fault, World};
use crate::image::{Image, ImageConfig, ImageOptions};
use crate::sandbox::config::{IdMapping, SandboxConfig, UserNamespace};
use crate::sandbox::{SandboxFilter, SandboxState};
use crate::{Error, Options, Runtime};

/// The image every test container runs.
fn image_id() -> String {
    format!("sha256:{}", "ab".repeat(32))
}

/// One runtime on its own temporary directories and fake machine.
struct Env {
    dir: PathBuf,
    world: Arc<Mutex<World>>,
    host: Arc<FakeHost>,
    rt: Option<Arc<Runtime>>,
}

impl Env {
    fn new(tag: &str) -> Env {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "crust-state-machine-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let world = Arc::new(Mutex::new(World::default()));
        let host = FakeHost::new(world.clone());
        let mut env = Env {
            dir,
            world,
            host,
            rt: None,
        };
        env.open();
        env.rt()
            .images()
            .add_for_tests(Image {
                id: image_id(),
                repo_tags: vec!["docker.io/library/app:1".into()],
                repo_digests: Vec::new(),
                size: 1,
                config: ImageConfig::default(),
                layers: Vec::new(),
                manifest_digests: vec![format!("sha256:{}", "cd".repeat(32))],
                pulled_at: 1,
            })
            .unwrap();
        env
    }

    fn options(&self) -> Options {
        Options {
            root: self.dir.join("root"),
            state: self.dir.join("state"),
            handlers: Vec::new(),
            default_handler: "runc".into(),
            shim: "/nonexistent/crust-shim".into(),
            shm_size: 64 << 20,
            default_cgroup_parent: "/crust".into(),
            images: ImageOptions {
                config_path: self.dir.join("certs.d"),
                ..Default::default()
            },
            cni: crust_cni::Settings {
                conf_dirs: vec![self.dir.join("cni-conf")],
                plugin_dirs: vec![self.dir.join("cni-bin")],
                cache_dir: self.dir.join("cni-cache"),
            },
        }
    }

    /// Opens a runtime (recovering what the last one left) on a fresh fake
    /// host over the same world.
    fn open(&mut self) {
        self.host = FakeHost::new(self.world.clone());
        self.rt = Some(Runtime::open(self.options(), self.host.host()).unwrap());
        self.host.inject(Fault::Never);
    }

    /// Drops the runtime as a crash of crustd would: nothing is undone.
    fn crash(&mut self) {
        let rt = self.rt.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut rt = Some(rt);
        // Background work may hold it for a moment.
        while let Some(r) = rt.take() {
            match Arc::try_unwrap(r) {
                Ok(r) => drop(r),
                Err(r) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                    rt = Some(r);
                }
                Err(_) => panic!("the runtime is still in use"),
            }
        }
    }

    fn rt(&self) -> &Arc<Runtime> {
        self.rt.as_ref().unwrap()
    }

    fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn pod(&self, attempt: u32) -> SandboxConfig {
        SandboxConfig {
            name: "pod".into(),
            namespace: "default".into(),
            uid: "uid-1".into(),
            attempt,
            hostname: "pod".into(),
            log_directory: self.logs().to_string_lossy().into_owned(),
            ..Default::default()
        }
    }

    fn container(&self, attempt: u32) -> ContainerConfig {
        ContainerConfig {
            name: "app".into(),
            attempt,
            image: image_id(),
            command: vec!["/app".into()],
            log_path: format!("app/{attempt}.log"),
            ..Default::default()
        }
    }

    /// A ready pod sandbox with a created container: their ids.
    async fn pod_with_container(&self) -> (String, String) {
        let sb = self.rt().run_sandbox(self.pod(0), None).await.unwrap();
        let c = self
            .rt()
            .create_container(&sb, self.container(0), None)
            .await
            .unwrap();
        (sb, c)
    }

    /// A ready pod sandbox with a running container: their ids.
    async fn pod_with_running_container(&self) -> (String, String) {
        let (sb, c) = self.pod_with_container().await;
        self.rt().start_container(&c).await.unwrap();
        (sb, c)
    }

    /// Everything still made: on the fake machine, and under the runtime's
    /// directories and the pod's logs.
    fn leftovers(&self) -> Vec<String> {
        let mut out = self.world.lock().unwrap().leftovers();
        let opts = self.options();
        for dir in [
            opts.state.join("containers"),
            opts.state.join("sandboxes"),
            opts.root.join("containers"),
            opts.root.join("meta").join("containers"),
            opts.root.join("meta").join("sandboxes"),
        ] {
            out.extend(entries(&dir));
        }
        out.extend(files_under(&self.logs()));
        if let Some(rt) = &self.rt
            && rt.images().holds_for_tests() > 0
        {
            out.push(format!("{} image holds", rt.images().holds_for_tests()));
        }
        out
    }

    fn containers(&self) -> Vec<crate::container::Container> {
        self.rt().list_containers(&ContainerFilter::default())
    }

    fn sandboxes(&self) -> Vec<crate::sandbox::Sandbox> {
        self.rt().list_sandboxes(&SandboxFilter::default())
    }

    /// Stops and removes every object, as kubelet's retries and garbage
    /// collection would; true when nothing is left anywhere.
    async fn remove_everything(&self) -> bool {
        for c in self.containers() {
            self.rt().stop_container(&c.id, 0).await.unwrap();
            self.rt().remove_container(&c.id).await.unwrap();
        }
        for sb in self.sandboxes() {
            self.rt().stop_sandbox(&sb.id).await.unwrap();
            self.rt().remove_sandbox(&sb.id).await.unwrap();
        }
        self.rt().sweep_orphans();
        self.containers().is_empty() && self.sandboxes().is_empty()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.rt = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// The host calls `f` makes when nothing fails.
async fn count_calls<F, Fut>(f: F) -> usize
where
    F: FnOnce(Arc<Runtime>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let env = Env::new("count");
    f(env.rt().clone()).await;
    env.host.calls().len()
}

/// The faults tried at call `k`: that call alone, and the host breaking
/// from there on (so the rollback fails too).
fn faults(k: usize) -> [Fault; 2] {
    [Fault::At(k), Fault::From(k)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sandbox_fails_at_every_call_and_leaves_only_what_a_retry_finishes() {
    let calls = count_calls(|rt| async move {
        let env_pod = SandboxConfig {
            name: "pod".into(),
            namespace: "default".into(),
            uid: "uid-1".into(),
            ..Default::default()
        };
        rt.run_sandbox(env_pod, None).await.unwrap();
    })
    .await;
    assert!(calls >= 4, "RunPodSandbox made only {calls} host calls");
    for k in 1..=calls {
        for fault in faults(k) {
            for retry in ["stop", "remove", "sweep"] {
                let env = Env::new("run-sandbox");
                env.host.inject(fault);
                let err = env.rt().run_sandbox(env.pod(0), None).await;
                let seen = env.host.calls();
                assert!(
                    err.is_err(),
                    "{fault:?} of {seen:?} did not fail the create"
                );
                env.host.inject(Fault::Never);
                let kept = env.sandboxes();
                match fault {
                    Fault::At(_) => {
                        assert!(kept.is_empty(), "{fault:?} of {seen:?} kept {kept:?}");
                        assert_eq!(
                            env.leftovers(),
                            Vec::<String>::new(),
                            "{fault:?} of {seen:?}"
                        );
                        continue;
                    }
                    _ => {
                        for sb in &kept {
                            assert_eq!(sb.state, SandboxState::NotReady);
                            assert!(!sb.owed.is_empty());
                        }
                    }
                }
                // A new attempt is not blocked by the one that failed.
                let again = env.rt().run_sandbox(env.pod(0), None).await.unwrap();
                assert!(kept.iter().all(|sb| sb.id != again));
                env.rt().remove_sandbox(&again).await.unwrap();
                for sb in &kept {
                    match retry {
                        "stop" => {
                            env.rt().stop_sandbox(&sb.id).await.unwrap();
                            assert!(env.rt().sandbox_status(&sb.id).unwrap().owed.is_empty());
                            env.rt().remove_sandbox(&sb.id).await.unwrap();
                        }
                        "remove" => env.rt().remove_sandbox(&sb.id).await.unwrap(),
                        _ => {
                            env.rt().sweep_orphans();
                            assert!(env.rt().sandbox_status(&sb.id).unwrap().owed.is_empty());
                            env.rt().remove_sandbox(&sb.id).await.unwrap();
                        }
                    }
                }
                assert!(env.sandboxes().is_empty());
                assert_eq!(
                    env.leftovers(),
                    Vec::<String>::new(),
                    "{fault:?} of {seen:?}, {retry}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_container_fails_at_every_call_and_leaves_only_what_a_retry_finishes() {
    let env = Env::new("count-container");
    let sb = env.rt().run_sandbox(env.pod(0), None).await.unwrap();
    env.host.inject(Fault::Never);
    env.rt()
        .create_container(&sb, env.container(0), None)
        .await
        .unwrap();
    let calls = env.host.calls().len();
    drop(env);
    assert!(calls >= 2, "CreateContainer made only {calls} host calls");
    for k in 1..=calls {
        for fault in faults(k) {
            for retry in ["stop", "remove", "sweep", "remove-pod"] {
                let env = Env::new("create-container");
                let sb = env.rt().run_sandbox(env.pod(0), None).await.unwrap();
                env.host.inject(fault);
                let err = env.rt().create_container(&sb, env.container(0), None).await;
                let seen = env.host.calls();
                assert!(
                    err.is_err(),
                    "{fault:?} of {seen:?} did not fail the create"
                );
                env.host.inject(Fault::Never);
                let kept = env.containers();
                if matches!(fault, Fault::At(_)) {
                    assert!(kept.is_empty(), "{fault:?} of {seen:?} kept {kept:?}");
                } else {
                    for c in &kept {
                        assert_eq!(c.state, ContainerState::Unknown);
                        assert_eq!(c.reason, "CreateFailed");
                        assert!(!c.owed.is_empty());
                    }
                }
                // kubelet's next attempt makes a new container and runs it.
                let again = env
                    .rt()
                    .create_container(&sb, env.container(0), None)
                    .await
                    .unwrap();
                assert!(kept.iter().all(|c| c.id != again));
                env.rt().start_container(&again).await.unwrap();
                for c in &kept {
                    match retry {
                        "stop" => {
                            env.rt().stop_container(&c.id, 0).await.unwrap();
                            let stopped = env.rt().container_status(&c.id).unwrap();
                            assert_eq!(stopped.state, ContainerState::Exited);
                            assert!(stopped.owed.is_empty());
                            env.rt().remove_container(&c.id).await.unwrap();
                        }
                        "remove" => env.rt().remove_container(&c.id).await.unwrap(),
                        "sweep" => {
                            env.rt().sweep_orphans();
                            let swept = env.rt().container_status(&c.id).unwrap();
                            assert!(swept.owed.is_empty());
                            env.rt().remove_container(&c.id).await.unwrap();
                        }
                        _ => {}
                    }
                }
                if retry != "remove-pod" {
                    env.rt().remove_container(&again).await.unwrap();
                    assert!(env.containers().is_empty());
                }
                env.rt().stop_sandbox(&sb).await.unwrap();
                env.rt().remove_sandbox(&sb).await.unwrap();
                assert!(env.containers().is_empty() && env.sandboxes().is_empty());
                assert_eq!(
                    env.leftovers(),
                    Vec::<String>::new(),
                    "{fault:?} of {seen:?}, {retry}"
                );
            }
        }
    }
}

/// A pod with its own user namespace, and a container of it with an
/// idmapped, recursively read-only volume: what crust prepares itself.
fn user_namespaced(env: &Env) -> (SandboxConfig, ContainerConfig) {
    let ids = IdMapping {
        inside: 0,
        outside: 100_000,
        count: 65_536,
    };
    let user = UserNamespace {
        uids: ids,
        gids: ids,
    };
    let mut pod = env.pod(0);
    pod.namespaces.user = Some(user);
    let volume = env.dir.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let mut container = env.container(0);
    container.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: volume.to_string_lossy().into_owned(),
        readonly: true,
        recursive_read_only: true,
        idmap: Some(user),
        ..Default::default()
    }];
    (pod, container)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespaced_pod_fails_at_every_call_and_its_removal_leaves_nothing() {
    let env = Env::new("count-userns");
    let (pod, container) = user_namespaced(&env);
    let sb = env.rt().run_sandbox(pod, None).await.unwrap();
    env.rt()
        .create_container(&sb, container, None)
        .await
        .unwrap();
    let seen = env.host.calls();
    drop(env);
    for wanted in ["namespaces.pin_new", "mounts.bind"] {
        assert!(seen.iter().any(|c| c == wanted), "no {wanted} in {seen:?}");
    }
    for k in 1..=seen.len() {
        for fault in faults(k) {
            let env = Env::new("userns");
            let (pod, container) = user_namespaced(&env);
            env.host.inject(fault);
            let made = match env.rt().run_sandbox(pod, None).await {
                Ok(sb) => env.rt().create_container(&sb, container, None).await,
                Err(e) => Err(e),
            };
            // Only detaching the prepared volume after the create is best
            // effort: the bundle's removal takes it down.
            let best_effort = k == seen.len();
            assert!(
                made.is_err() != best_effort,
                "{fault:?} of {seen:?}: {made:?}"
            );
            env.host.inject(Fault::Never);
            assert!(env.remove_everything().await);
            assert_eq!(
                env.leftovers(),
                Vec::<String>::new(),
                "{fault:?} of {seen:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_step_that_fails_alone_is_kept_and_finished_by_the_removal() {
    // The last call of each create fails; so does every call of one kind of
    // undo step, while the rest of the rollback goes through.
    for undo in [
        "network.del",
        "shim.stop_pid_holder",
        "mounts.unmount",
        "namespaces.unpin",
    ] {
        let env = Env::new("sandbox-undo");
        env.host.inject(Fault::At(5));
        env.host.break_call(undo);
        assert!(env.rt().run_sandbox(env.pod(0), None).await.is_err());
        assert_eq!(env.host.calls()[4], "network.add");
        let kept = env.sandboxes();
        assert_eq!(kept.len(), 1, "{undo}");
        assert!(!kept[0].owed.is_empty(), "{undo}");
        env.host.inject(Fault::Never);
        env.rt().remove_sandbox(&kept[0].id).await.unwrap();
        assert_eq!(env.leftovers(), Vec::<String>::new(), "{undo}");
    }
    for undo in ["runc.delete", "mounts.unmount"] {
        let env = Env::new("container-undo");
        let sb = env.rt().run_sandbox(env.pod(0), None).await.unwrap();
        env.host.inject(Fault::At(2));
        env.host.break_call(undo);
        let failed = env.rt().create_container(&sb, env.container(0), None).await;
        assert!(failed.is_err());
        assert_eq!(env.host.calls()[1], "shim.launch@runc");
        let kept = env.containers();
        assert_eq!(kept.len(), 1, "{undo}");
        assert_eq!(kept[0].state, ContainerState::Unknown);
        assert!(
            kept[0].message.contains("still to undo"),
            "{}",
            kept[0].message
        );
        env.host.inject(Fault::Never);
        assert!(env.remove_everything().await);
        assert_eq!(env.leftovers(), Vec::<String>::new(), "{undo}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_container_fails_at_every_call_and_a_retry_or_removal_finishes() {
    let env = Env::new("count-start");
    let (_, c) = env.pod_with_container().await;
    env.host.inject(Fault::Never);
    env.rt().start_container(&c).await.unwrap();
    let calls = env.host.calls().len();
    drop(env);
    for k in 1..=calls {
        for fault in faults(k) {
            let env = Env::new("start-container");
            let (_, c) = env.pod_with_container().await;
            env.host.inject(fault);
            let first = env.rt().start_container(&c).await;
            let seen = env.host.calls();
            env.host.inject(Fault::Never);
            let state = env.rt().container_status(&c).unwrap().state;
            match first {
                Ok(()) => assert_eq!(state, ContainerState::Running, "{fault:?} of {seen:?}"),
                Err(_) => {
                    assert!(
                        matches!(state, ContainerState::Created | ContainerState::Running),
                        "{fault:?} of {seen:?} left it {state:?}"
                    );
                    if state == ContainerState::Created {
                        env.rt().start_container(&c).await.unwrap();
                    }
                }
            }
            assert_eq!(
                env.rt().container_status(&c).unwrap().state,
                ContainerState::Running
            );
            assert!(env.remove_everything().await);
            assert_eq!(
                env.leftovers(),
                Vec::<String>::new(),
                "{fault:?} of {seen:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_fail_at_every_call_and_a_retry_finishes() {
    let env = Env::new("count-remove");
    let (sb, _) = env.pod_with_running_container().await;
    env.host.inject(Fault::Never);
    env.rt().remove_sandbox(&sb).await.unwrap();
    let calls = env.host.calls().len();
    drop(env);
    for k in 1..=calls {
        for fault in faults(k) {
            let env = Env::new("remove");
            let (sb, c) = env.pod_with_running_container().await;
            env.host.inject(fault);
            let first = env.rt().remove_sandbox(&sb).await;
            let seen = env.host.calls();
            env.host.inject(Fault::Never);
            if first.is_err() {
                // What is left is listed, and the retry finishes it.
                assert!(
                    !env.sandboxes().is_empty(),
                    "{fault:?} of {seen:?} forgot the pod"
                );
                env.rt().remove_sandbox(&sb).await.unwrap();
            }
            assert!(env.rt().container_status(&c).is_err());
            assert!(env.sandboxes().is_empty());
            assert_eq!(
                env.leftovers(),
                Vec::<String>::new(),
                "{fault:?} of {seen:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_remove_are_idempotent() {
    let env = Env::new("idempotent");
    let (sb, c) = env.pod_with_running_container().await;
    for _ in 0..2 {
        env.rt().stop_container(&c, 0).await.unwrap();
        assert_eq!(
            env.rt().container_status(&c).unwrap().state,
            ContainerState::Exited
        );
    }
    assert!(matches!(
        env.rt().start_container(&c).await,
        Err(Error::FailedPrecondition(_))
    ));
    for _ in 0..2 {
        env.rt().remove_container(&c).await.unwrap();
    }
    for _ in 0..2 {
        env.rt().stop_sandbox(&sb).await.unwrap();
        assert_eq!(
            env.rt().sandbox_status(&sb).unwrap().state,
            SandboxState::NotReady
        );
    }
    for _ in 0..2 {
        env.rt().remove_sandbox(&sb).await.unwrap();
    }
    env.rt().stop_container("nope", 0).await.unwrap();
    env.rt().remove_container("nope").await.unwrap();
    env.rt().stop_sandbox("nope").await.unwrap();
    env.rt().remove_sandbox("nope").await.unwrap();
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_resources_are_applied_and_recorded() {
    let env = Env::new("update");
    let (_, c) = env.pod_with_running_container().await;
    let mut r = env.container(0).resources;
    r.memory_limit_in_bytes = 128 << 20;
    r.cpu_shares = 512;
    r.oom_score_adj = 999;
    env.host.inject(Fault::Never);
    env.rt()
        .update_container_resources(&c, r.clone())
        .await
        .unwrap();
    assert_eq!(env.host.calls(), ["runc.update@runc"]);
    let recorded = env.rt().container_status(&c).unwrap().config.resources;
    assert_eq!(recorded.memory_limit_in_bytes, 128 << 20);
    assert_eq!(recorded.cpu_shares, 512);
    assert_eq!(
        recorded.oom_score_adj, 0,
        "oom_score_adj is not a cgroup limit"
    );

    // A failed update changes nothing.
    env.host.inject(Fault::At(1));
    let mut bigger = r.clone();
    bigger.memory_limit_in_bytes = 256 << 20;
    assert!(
        env.rt()
            .update_container_resources(&c, bigger)
            .await
            .is_err()
    );
    let kept = env.rt().container_status(&c).unwrap().config.resources;
    assert_eq!(kept.memory_limit_in_bytes, 128 << 20);
    env.host.inject(Fault::Never);

    let mut bad = r.clone();
    bad.unified.insert("../escape".into(), "1".into());
    assert!(matches!(
        env.rt().update_container_resources(&c, bad).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        env.rt().update_container_resources("nope", r.clone()).await,
        Err(Error::NotFound(_))
    ));
    env.rt().stop_container(&c, 0).await.unwrap();
    assert!(matches!(
        env.rt().update_container_resources(&c, r).await,
        Err(Error::FailedPrecondition(_))
    ));
    assert!(env.remove_everything().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_is_handed_the_first_result() {
    let env = Env::new("retried-create");
    let past = Some(Instant::now() - Duration::from_secs(1));
    // The first answers came after the caller's deadline: nobody got them.
    let sb = env.rt().run_sandbox(env.pod(0), past).await.unwrap();
    let sb_again = env.rt().run_sandbox(env.pod(0), None).await.unwrap();
    assert_eq!(sb, sb_again);
    let c = env
        .rt()
        .create_container(&sb, env.container(0), past)
        .await
        .unwrap();
    let c_again = env
        .rt()
        .create_container(&sb, env.container(0), None)
        .await
        .unwrap();
    assert_eq!(c, c_again);
    assert_eq!(env.containers().len(), 1);
    assert_eq!(env.sandboxes().len(), 1);
    // Once received, the same name is in use.
    assert!(matches!(
        env.rt().create_container(&sb, env.container(0), None).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(env.remove_everything().await);
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_any_two_calls_is_recovered() {
    async fn lifecycle(env: &Env) -> Result<(), String> {
        let rt = env.rt().clone();
        let sb = rt
            .run_sandbox(env.pod(0), None)
            .await
            .map_err(|e| e.to_string())?;
        let c = rt
            .create_container(&sb, env.container(0), None)
            .await
            .map_err(|e| e.to_string())?;
        rt.start_container(&c).await.map_err(|e| e.to_string())?;
        rt.stop_container(&c, 0).await.map_err(|e| e.to_string())?;
        rt.remove_container(&c).await.map_err(|e| e.to_string())?;
        rt.stop_sandbox(&sb).await.map_err(|e| e.to_string())?;
        rt.remove_sandbox(&sb).await.map_err(|e| e.to_string())
    }
    let env = Env::new("count-crash");
    env.host.inject(Fault::Never);
    lifecycle(&env).await.unwrap();
    let calls = env.host.calls().len();
    drop(env);
    quiet_injected_crashes();
    for k in 1..=calls {
        let mut env = Env::new("crash");
        env.host.inject(Fault::Crash(k));
        let crashed = lifecycle(&env).await;
        let seen = env.host.calls();
        assert!(crashed.is_err(), "no crash at call {k} of {seen:?}");
        env.crash();
        env.open();
        // Every object recovered can be stopped and removed, and then
        // nothing is left anywhere.
        for c in env.containers() {
            assert!(
                matches!(
                    c.state,
                    ContainerState::Created | ContainerState::Running | ContainerState::Exited
                ),
                "crash at {seen:?} left container {c:?}"
            );
        }
        assert!(env.remove_everything().await, "crash at {seen:?}");
        assert_eq!(env.leftovers(), Vec::<String>::new(), "crash at {seen:?}");
    }
}

/// Keeps the panics the fake host raises as crashes out of the test output;
/// every other panic is reported as usual.
fn quiet_injected_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.starts_with("injected crash"));
            if !injected {
                report(info);
            }
        }));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_records_are_kept_unknown_until_removed() {
    let mut env = Env::new("unreadable");
    let (sb, c) = env.pod_with_running_container().await;
    env.crash();
    let meta = env.dir.join("root").join("meta");
    std::fs::write(meta.join("containers").join(format!("{c}.json")), b"{torn").unwrap();
    std::fs::write(meta.join("sandboxes").join(format!("{sb}.json")), b"{torn").unwrap();
    env.open();
    let lost = env.rt().container_status(&c).unwrap();
    assert_eq!(lost.state, ContainerState::Unknown);
    assert!(lost.message.contains("could not read"), "{}", lost.message);
    let pod = env.rt().sandbox_status(&sb).unwrap();
    assert_eq!(pod.state, SandboxState::NotReady);
    // Its resources are still there until kubelet removes it.
    assert!(!env.world.lock().unwrap().leftovers().is_empty());
    env.rt().remove_container(&c).await.unwrap();
    env.rt().remove_sandbox(&sb).await.unwrap();
    assert!(env.containers().is_empty() && env.sandboxes().is_empty());
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

/// Calls of `calls` that went to an OCI runtime or a shim launch, with the
/// handler they went to.
fn handler_calls(calls: &[String]) -> Vec<&str> {
    calls
        .iter()
        .map(String::as_str)
        .filter(|c| c.contains('@'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_containers_keep_its_handler_also_after_a_restart() {
    let mut env = Env::new("handler");
    let mut pod = env.pod(0);
    pod.runtime_handler = "youki".into();
    let sb = env.rt().run_sandbox(pod, None).await.unwrap();
    assert_eq!(env.rt().sandbox_status(&sb).unwrap().handler, "youki");
    let c = env
        .rt()
        .create_container(&sb, env.container(0), None)
        .await
        .unwrap();
    env.rt().start_container(&c).await.unwrap();
    assert_eq!(
        handler_calls(&env.host.calls()),
        ["shim.launch@youki", "runc.start@youki"]
    );

    env.crash();
    env.open();
    assert_eq!(env.rt().container_status(&c).unwrap().handler, "youki");
    env.host.inject(Fault::Never);
    env.rt().stop_container(&c, 0).await.unwrap();
    env.rt().remove_container(&c).await.unwrap();
    let calls = env.host.calls();
    let used = handler_calls(&calls);
    // The stop signals through the shim; the delete goes to youki.
    assert!(calls.iter().any(|c| c == "shim.control"), "{calls:?}");
    assert!(used.contains(&"runc.delete@youki"), "{used:?}");
    assert!(!used.iter().any(|c| c.ends_with("@runc")), "{used:?}");
    assert!(env.remove_everything().await);
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_unusable_handlers_are_refused_before_anything_is_made() {
    let env = Env::new("handler-refused");
    let mut pod = env.pod(0);
    pod.runtime_handler = "kata".into();
    match env.rt().run_sandbox(pod, None).await {
        Err(Error::NotFound(msg)) => {
            assert!(msg.contains("\"kata\""), "{msg}");
            assert!(msg.contains("\"runc\", \"youki\""), "{msg}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let mut pod = env.pod(0);
    pod.runtime_handler = "broken".into();
    match env.rt().run_sandbox(pod, None).await {
        Err(Error::FailedPrecondition(msg)) => {
            assert!(msg.contains("/fake/broken not found"), "{msg}")
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    assert!(env.host.calls().is_empty(), "{:?}", env.host.calls());
    // The empty name is the default handler.
    let sb = env.rt().run_sandbox(env.pod(0), None).await.unwrap();
    let status = env.rt().sandbox_status(&sb).unwrap();
    assert_eq!(
        (
            status.handler.as_str(),
            status.config.runtime_handler.as_str()
        ),
        ("runc", "")
    );
    assert!(env.remove_everything().await);
}
