//! Runtime handlers as Status lists them.

use crust_runtime::Runtime;
use k8s_cri::v1;

/// `StatusResponse.runtime_handlers`: the default handler under the empty
/// name (as the CRI asks: kubelet looks the default up by ""), then every
/// configured handler under its own name, each with what it offers on this
/// host (nothing when its binary cannot run).
pub fn runtime_handlers(runtime: &Runtime) -> Vec<v1::RuntimeHandler> {
    let all = runtime.handlers();
    let entry = |name: &str, h: &crust_runtime::host::Handler| {
        let f = runtime.handler_features(h);
        v1::RuntimeHandler {
            name: name.to_string(),
            features: Some(v1::RuntimeHandlerFeatures {
                recursive_read_only_mounts: f.recursive_read_only_mounts,
                user_namespaces: f.user_namespaces,
            }),
        }
    };
    all.get(all.default_name())
        .map(|h| entry("", h))
        .into_iter()
        .chain(all.iter().map(|h| entry(&h.spec.name, h)))
        .collect()
}
