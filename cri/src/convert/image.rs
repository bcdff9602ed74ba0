//! Image messages.

use crust_runtime::image::{Image, RegistryAuth};
use k8s_cri::v1;

/// CRI AuthConfig → domain credentials.
pub fn auth_from(a: Option<v1::AuthConfig>) -> RegistryAuth {
    let a = a.unwrap_or_default();
    RegistryAuth {
        username: a.username,
        password: a.password,
        auth: a.auth,
        server_address: a.server_address,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    }
}

/// Domain image → CRI Image. The image's user becomes `uid` when numeric,
/// `username` otherwise.
pub fn image_to(i: &Image, pinned: bool) -> v1::Image {
    let user = i.config.user.split(':').next().unwrap_or("");
    let (uid, username) = match user.parse::<i64>() {
        Ok(n) => (Some(v1::Int64Value { value: n }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    v1::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid,
        username,
        spec: Some(v1::ImageSpec {
            image: i.id.clone(),
            ..Default::default()
        }),
        pinned,
    }
}

/// The verbose `info` of ImageStatus: the image config as pulled.
pub fn verbose_info(i: &Image) -> std::collections::HashMap<String, String> {
    [("info".to_string(), i.config.raw.clone())]
        .into_iter()
        .collect()
}
