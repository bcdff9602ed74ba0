//! Image messages.

use crust_runtime::container::user::{IdSpec, image_user};
use crust_runtime::image::{FsUsage, Image, RegistryAuth};
use k8s_cri::v1;
use serde_json::{Value, json};

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

/// Domain image → CRI Image. The image's user (`User` in its config:
/// `1000`, `1000:1000`, `name` or `name:group`) becomes `uid` when it is a
/// valid numeric id, `username` (as written) otherwise; neither is set when
/// the image names no user. A user that only looks numeric (`-1`, ` 1000`)
/// is reported as a username, which kubelet's runAsNonRoot check refuses,
/// and CreateContainer refuses it too.
pub fn image_to(i: &Image, pinned: bool) -> v1::Image {
    let (uid, username) = match image_user(&i.config.user) {
        IdSpec::Unset => (None, String::new()),
        IdSpec::Id(n) => (
            Some(v1::Int64Value {
                value: i64::from(n),
            }),
            String::new(),
        ),
        IdSpec::Name(name) | IdSpec::Invalid(name) => (None, name.to_string()),
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

/// The verbose `info` of ImageStatus: one key, `info`, holding a JSON object
/// with, like containerd's, `imageSpec` (the image config as pulled) and
/// `chainID` (of the top layer), plus `id`, `repoTags`, `repoDigests`,
/// `manifestDigests`, `size`, `pulledAt` (ns since the epoch), `pinned`, and
/// `layers` (bottom first, each with `digest`, `size`, `diffID` and
/// `chainID`).
pub fn verbose_info(i: &Image, pinned: bool) -> std::collections::HashMap<String, String> {
    let spec = serde_json::from_str::<Value>(&i.config.raw)
        .unwrap_or_else(|_| Value::String(i.config.raw.clone()));
    let layers: Vec<Value> = i
        .layers
        .iter()
        .map(|l| {
            json!({
                "digest": l.digest,
                "size": l.size,
                "diffID": l.diff_id,
                "chainID": l.chain_id,
            })
        })
        .collect();
    let info = json!({
        "id": i.id,
        "repoTags": i.repo_tags,
        "repoDigests": i.repo_digests,
        "manifestDigests": i.manifest_digests,
        "size": i.size,
        "pulledAt": i.pulled_at,
        "pinned": pinned,
        "chainID": i.layers.last().map(|l| l.chain_id.as_str()).unwrap_or_default(),
        "layers": layers,
        "imageSpec": spec,
    });
    [("info".to_string(), info.to_string())]
        .into_iter()
        .collect()
}

/// Domain disk use → CRI FilesystemUsage.
pub fn fs_usage_to(u: &FsUsage) -> v1::FilesystemUsage {
    v1::FilesystemUsage {
        timestamp: u.timestamp,
        fs_id: Some(v1::FilesystemIdentifier {
            mountpoint: u.mountpoint.to_string_lossy().into_owned(),
        }),
        used_bytes: Some(v1::UInt64Value {
            value: u.used_bytes,
        }),
        inodes_used: Some(v1::UInt64Value {
            value: u.inodes_used,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_runtime::image::{ImageConfig, ImageLayer};

    fn image(user: &str) -> Image {
        Image {
            id: format!("sha256:{}", "a".repeat(64)),
            repo_tags: vec!["reg.io/a:1".into()],
            repo_digests: Vec::new(),
            size: 10,
            config: ImageConfig {
                user: user.into(),
                raw: r#"{"config":{"User":"x"},"rootfs":{"type":"layers"}}"#.into(),
                ..ImageConfig::default()
            },
            layers: vec![ImageLayer {
                digest: format!("sha256:{}", "b".repeat(64)),
                size: 5,
                diff_id: format!("sha256:{}", "c".repeat(64)),
                chain_id: format!("sha256:{}", "c".repeat(64)),
            }],
            manifest_digests: Vec::new(),
            pulled_at: 1,
        }
    }

    #[test]
    fn user_becomes_uid_or_username() {
        for (user, uid, name) in [
            ("", None, ""),
            ("1000", Some(1000), ""),
            ("1000:1000", Some(1000), ""),
            ("0", Some(0), ""),
            ("nobody", None, "nobody"),
            ("app:staff", None, "app"),
            (":1000", None, ""),
            ("-1", None, "-1"),
            (" 1000", None, " 1000"),
            ("1000 :0", None, "1000 "),
            ("4294967296", None, "4294967296"),
        ] {
            let got = image_to(&image(user), false);
            assert_eq!(got.uid.map(|u| u.value), uid, "{user:?}");
            assert_eq!(got.username, name, "{user:?}");
        }
    }

    #[test]
    fn verbose_info_is_json_with_the_config() {
        let info = verbose_info(&image(""), true);
        let v: Value = serde_json::from_str(&info["info"]).unwrap();
        assert_eq!(v["imageSpec"]["config"]["User"], "x");
        assert_eq!(v["chainID"], format!("sha256:{}", "c".repeat(64)));
        assert_eq!(v["layers"][0]["size"], 5);
        assert_eq!(v["pinned"], true);
    }
}
