//! Which entry of a multi-platform index this node runs: linux plus the
//! node's CPU architecture, in the names OCI uses (`amd64`, `arm64`, ...).

use std::fmt;

use super::manifest::{Descriptor, PlatformSpec};

/// An OS/architecture/variant triple as OCI indexes name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, `linux`.
    pub os: String,
    /// OCI architecture name, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// Architecture variant, e.g. `v7` for 32-bit arm; `None` where there is none.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this node: linux and the architecture crustd was built for.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            "loongarch64" => ("loong64", None),
            "mips64" => ("mips64le", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(String::from),
        }
    }

    /// How well an index entry for `spec` fits this platform, higher is
    /// better: [`EXACT`] for the same os, architecture and variant, less for
    /// a variant that runs here too (the closer, the higher), `None` for one
    /// that does not run here. `os.version` and `os.features` (Windows
    /// details) play no part on linux.
    fn rank(&self, spec: &PlatformSpec) -> Option<u32> {
        if spec.os != self.os || normalize_arch(&spec.architecture) != self.architecture {
            return None;
        }
        let theirs = spec.variant.as_deref().filter(|v| !v.is_empty());
        let ours = self.variant.as_deref();
        if ours == theirs {
            return Some(EXACT);
        }
        match (self.architecture.as_str(), ours, theirs) {
            // arm64 images rarely name their variant; v8 is the baseline.
            ("arm64", Some("v8"), None) => Some(EXACT - 1),
            // amd64 v1 is the baseline that runs everywhere; v2 and up need
            // CPU features this node may lack.
            ("amd64", None, Some("v1")) => Some(EXACT - 1),
            // Older 32-bit arm variants run on newer cores, the closest is
            // best; an arm image without a variant means v7.
            ("arm", Some(ours), theirs) => {
                let ours = arm_level(ours)?;
                let (level, implied) = match theirs {
                    Some(v) => (arm_level(v)?, 0),
                    None => (7, 1),
                };
                let distance = ours.checked_sub(level)?;
                Some(EXACT.saturating_sub(10 * distance + implied))
            }
            _ => None,
        }
    }
}

/// The rank of an exact platform match.
const EXACT: u32 = 1000;

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" => "386",
        other => other,
    }
}

fn arm_level(variant: &str) -> Option<u32> {
    variant.strip_prefix('v')?.parse().ok()
}

/// Picks the manifest for `platform` from an index's entries: the best
/// ranked one (an exact variant match, else the closest compatible variant),
/// the first of equals.
pub(crate) fn select<'a>(
    manifests: &'a [Descriptor],
    platform: &Platform,
) -> Option<&'a Descriptor> {
    let mut best: Option<(u32, &Descriptor)> = None;
    for d in manifests {
        let Some(rank) = d.platform.as_ref().and_then(|p| platform.rank(p)) else {
            continue;
        };
        if best.is_none_or(|(r, _)| rank > r) {
            best = Some((rank, d));
        }
    }
    best.map(|(_, d)| d)
}

/// The platforms an index offers, for an error message: `linux/amd64, linux/arm/v7`.
pub(crate) fn describe(manifests: &[Descriptor]) -> String {
    let names: Vec<String> = manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match p.variant.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if names.is_empty() {
        "none named".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: 100,
            platform: Some(PlatformSpec {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(String::from),
            }),
            urls: Vec::new(),
        }
    }

    fn p(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(String::from),
        }
    }

    #[test]
    fn host_platform_is_linux_with_oci_arch_name() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h.architecture, "amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(h.architecture, "arm64");
        }
    }

    #[test]
    fn selects_matching_platform() {
        let index = vec![
            entry("unknown", "unknown", None, 1),
            entry("linux", "arm", Some("v6"), 2),
            entry("linux", "arm", Some("v7"), 3),
            entry("linux", "arm64", None, 4),
            entry("linux", "amd64", None, 5),
            entry("windows", "amd64", None, 6),
            entry("linux", "arm64", Some("v8"), 7),
        ];
        assert_eq!(
            select(&index, &p("amd64", None)).unwrap().digest,
            index[4].digest
        );
        // Exact variant beats the variant-less entry that comes first.
        assert_eq!(
            select(&index, &p("arm64", Some("v8"))).unwrap().digest,
            index[6].digest
        );
        assert_eq!(
            select(&index[..6], &p("arm64", Some("v8"))).unwrap().digest,
            index[3].digest
        );
        assert_eq!(
            select(&index, &p("arm", Some("v7"))).unwrap().digest,
            index[2].digest
        );
        // The closest older variant wins.
        assert_eq!(
            select(&index[..3], &p("arm", Some("v8"))).unwrap().digest,
            index[2].digest
        );
        assert!(select(&index, &p("s390x", None)).is_none());
        assert!(select(&index[..1], &p("amd64", None)).is_none());
        assert_eq!(
            describe(&index[..4]),
            "unknown/unknown, linux/arm/v6, linux/arm/v7, linux/arm64"
        );
    }

    #[test]
    fn amd64_variants_beyond_baseline_are_not_chosen() {
        let index = vec![
            entry("linux", "amd64", Some("v3"), 1),
            entry("linux", "x86_64", Some("v1"), 2),
        ];
        assert_eq!(
            select(&index, &p("amd64", None)).unwrap().digest,
            index[1].digest
        );
    }

    #[test]
    fn arm_picks_the_closest_older_variant() {
        let index = vec![
            entry("linux", "arm", Some("v5"), 1),
            entry("linux", "arm", Some("v6"), 2),
            entry("linux", "arm", Some("v8"), 3),
        ];
        assert_eq!(
            select(&index, &p("arm", Some("v7"))).unwrap().digest,
            index[1].digest
        );
        assert!(select(&index[2..], &p("arm", Some("v7"))).is_none());
        // No variant means v7: fine for v7 and v8, not for v6.
        let bare = vec![entry("linux", "arm", None, 4)];
        assert!(select(&bare, &p("arm", Some("v7"))).is_some());
        assert!(select(&bare, &p("arm", Some("v6"))).is_none());
        // An exact v7 beats the implied one.
        let both = vec![
            entry("linux", "arm", None, 4),
            entry("linux", "arm", Some("v7"), 5),
        ];
        assert_eq!(
            select(&both, &p("arm", Some("v7"))).unwrap().digest,
            both[1].digest
        );
    }

    #[test]
    fn os_version_and_features_do_not_matter_on_linux() {
        let e: Descriptor = serde_json::from_str(&format!(
            r#"{{"mediaType":"x","digest":"sha256:{}","size":1,
                "platform":{{"os":"linux","architecture":"amd64","os.version":"6.1","os.features":["x"]}}}}"#,
            "01".repeat(32)
        ))
        .unwrap();
        let index = vec![entry("windows", "amd64", None, 2), e];
        assert_eq!(
            select(&index, &p("amd64", None)).unwrap().digest,
            index[1].digest
        );
        assert_eq!(describe(&index), "windows/amd64, linux/amd64");
    }
}
