//! Runtime handlers as Status lists them.

use crust_runtime::Runtime;
use crust_runtime::host::Handler;
use k8s_cri::v1;

/// The handlers as Status lists them: the default handler under the empty
/// name (as the CRI asks: kubelet looks the default up by ""), then every
/// configured handler under its own name.
pub fn listed(runtime: &Runtime) -> Vec<(&str, &Handler)> {
    let all = runtime.handlers();
    all.get(all.default_name())
        .map(|h| ("", h))
        .into_iter()
        .chain(all.iter().map(|h| (h.spec.name.as_str(), h)))
        .collect()
}

/// `StatusResponse.runtime_handlers`: [`listed`], each with what it offers
/// on this host (nothing when its binary cannot run).
pub fn runtime_handlers(runtime: &Runtime) -> Vec<v1::RuntimeHandler> {
    listed(runtime)
        .into_iter()
        .map(|(name, h)| {
            let f = runtime.handler_features(h);
            v1::RuntimeHandler {
                name: name.to_string(),
                features: Some(v1::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: f.recursive_read_only_mounts,
                    user_namespaces: f.user_namespaces,
                }),
            }
        })
        .collect()
}
