//! Extra `docker-registry` processes for one test: one demanding htpasswd
//! Basic auth, one serving HTTPS with a test CA's certificate (optionally
//! demanding client certificates). Each runs on its own loopback port with
//! its own storage, and is killed by pid (its directories removed) when
//! dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

use crate::image_builder::Image;
use crate::registry::{Registry, RegistryClient};
use crate::tls::TestCerts;
use crate::{requirements, unique};

/// A registry started for one test.
#[derive(Debug)]
pub struct SecuredRegistry {
    registry: Registry,
    /// Directory with its htpasswd file or certificates.
    files: PathBuf,
    /// The certificates, for a TLS registry.
    pub certs: Option<TestCerts>,
    /// The Basic credentials, for an htpasswd registry.
    pub credentials: Option<(String, String)>,
}

impl SecuredRegistry {
    /// A registry that wants Basic `user:password` (bcrypt htpasswd) on
    /// every request.
    pub fn with_htpasswd(user: &str, password: &str) -> Result<SecuredRegistry> {
        let files = files_dir("htpasswd")?;
        let made = (|| {
            let htpasswd = requirements::find_program("htpasswd")
                .context("htpasswd is not installed (Debian package apache2-utils)")?;
            let out = Command::new(htpasswd)
                .args(["-Bbn", user, password])
                .output()
                .context("running htpasswd")?;
            ensure!(
                out.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let file = files.join("htpasswd");
            std::fs::write(&file, &out.stdout)?;
            let extra = format!(
                "auth:\n  htpasswd:\n    realm: crust-e2e\n    path: {}\n",
                file.display()
            );
            Registry::start_configured(&extra, |status| status == 401)
        })();
        Self::finish(made, files, None, Some((user.into(), password.into())))
    }

    /// A registry serving HTTPS on `127.0.0.1` with a certificate of a fresh
    /// test CA; with `require_client_cert` it also demands a client
    /// certificate signed by that CA.
    pub fn with_tls(require_client_cert: bool) -> Result<SecuredRegistry> {
        let files = files_dir("tls")?;
        let made = (|| {
            let certs = TestCerts::make(&files)?;
            let mut extra = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                certs.server_cert.display(),
                certs.server_key.display()
            );
            if require_client_cert {
                extra.push_str(&format!("    clientcas:\n      - {}\n", certs.ca.display()));
            }
            // Plain HTTP to a TLS port gets Go's 400 once it is up.
            let registry = Registry::start_configured(&extra, |status| status == 400)?;
            Ok((registry, certs))
        })();
        match made {
            Ok((registry, certs)) => Self::finish(Ok(registry), files, Some(certs), None),
            Err(e) => Self::finish(Err(e), files, None, None),
        }
    }

    fn finish(
        started: Result<Registry>,
        files: PathBuf,
        certs: Option<TestCerts>,
        credentials: Option<(String, String)>,
    ) -> Result<SecuredRegistry> {
        match started {
            Ok(registry) => Ok(SecuredRegistry {
                registry,
                files,
                certs,
                credentials,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&files);
                Err(e)
            }
        }
    }

    /// `127.0.0.1:<port>`, the registry host of image references.
    pub fn host(&self) -> &str {
        &self.registry.addr
    }

    /// A client that can push to this registry (trusting its CA, sending its
    /// credentials, presenting the client certificate).
    pub fn client(&self) -> Result<RegistryClient> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(60));
        let mut scheme = "http";
        if let Some(certs) = &self.certs {
            scheme = "https";
            let ca = std::fs::read(&certs.ca)?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&ca)?);
            let mut identity = std::fs::read(&certs.client_cert)?;
            identity.extend(std::fs::read(&certs.client_key)?);
            builder = builder.identity(reqwest::Identity::from_pem(&identity)?);
        }
        if let Some((user, password)) = &self.credentials {
            let mut headers = HeaderMap::new();
            let mut value = HeaderValue::from_str(&format!(
                "Basic {}",
                base64(format!("{user}:{password}").as_bytes())
            ))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Ok(RegistryClient::with_client(
            &format!("{scheme}://{}", self.host()),
            builder.build()?,
        ))
    }

    /// Pushes `image` to `repo:tag`.
    pub async fn push(&self, repo: &str, tag: &str, image: &Image) -> Result<()> {
        self.client()?
            .push_image(repo, Some(tag), image)
            .await
            .with_context(|| format!("pushing {repo}:{tag} to {}", self.host()))
    }

    /// Where the certificates and other files live.
    pub fn files(&self) -> &Path {
        &self.files
    }
}

impl Drop for SecuredRegistry {
    fn drop(&mut self) {
        self.registry.stop();
        let _ = std::fs::remove_dir_all(&self.files);
    }
}

fn files_dir(kind: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("crust-e2e-{kind}-{}", unique::suffix()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_encodes() {
        assert_eq!(super::base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(super::base64(b"a"), "YQ==");
        assert_eq!(super::base64(b"ab"), "YWI=");
        assert_eq!(super::base64(b""), "");
    }
}
