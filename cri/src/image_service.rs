//! CRI ImageService: thin handlers over the runtime's image store.

use std::sync::Arc;

use crust_runtime::{Error, Runtime};
use k8s_cri::v1;
use k8s_cri::v1::image_service_server;
use tonic::{Request, Response, Status};

use crate::convert::image;
use crate::instrument::{off_thread, rpc};

/// The ImageService implementation.
pub struct ImageService {
    runtime: Arc<Runtime>,
}

impl ImageService {
    /// Serves the image store of `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        ImageService { runtime }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn wanted(spec: Option<v1::ImageSpec>) -> crust_runtime::Result<String> {
    let image = spec.map(|s| s.image).unwrap_or_default();
    if image.trim().is_empty() {
        return Err(Error::invalid("an image reference or id is required"));
    }
    Ok(image)
}

#[tonic::async_trait]
impl image_service_server::ImageService for ImageService {
    async fn list_images(
        &self,
        req: Request<v1::ListImagesRequest>,
    ) -> Reply<v1::ListImagesResponse> {
        rpc("ListImages", async {
            let filter = req
                .into_inner()
                .filter
                .and_then(|f| f.image)
                .map(|s| s.image)
                .unwrap_or_default();
            let images = if filter.is_empty() {
                self.runtime.images().list()
            } else {
                self.runtime.images().get(&filter).into_iter().collect()
            };
            Ok(v1::ListImagesResponse {
                images: images
                    .iter()
                    .map(|i| image::image_to(i, self.runtime.images().is_pinned(i)))
                    .collect(),
            })
        })
        .await
    }

    async fn image_status(
        &self,
        req: Request<v1::ImageStatusRequest>,
    ) -> Reply<v1::ImageStatusResponse> {
        rpc("ImageStatus", async {
            let req = req.into_inner();
            let images = self.runtime.images();
            let found = images.get(&wanted(req.image)?);
            let pinned = found.as_ref().is_some_and(|i| images.is_pinned(i));
            Ok(v1::ImageStatusResponse {
                info: match (&found, req.verbose) {
                    (Some(i), true) => image::verbose_info(i, pinned),
                    _ => Default::default(),
                },
                image: found.as_ref().map(|i| image::image_to(i, pinned)),
            })
        })
        .await
    }

    async fn pull_image(&self, req: Request<v1::PullImageRequest>) -> Reply<v1::PullImageResponse> {
        rpc("PullImage", async {
            let req = req.into_inner();
            let reference = wanted(req.image)?;
            let auth = image::auth_from(req.auth);
            let pulled = self.runtime.images().pull(&reference, &auth).await?;
            tracing::info!(%reference, id = %pulled.id, "image pulled");
            Ok(v1::PullImageResponse {
                image_ref: pulled.id,
            })
        })
        .await
    }

    async fn remove_image(
        &self,
        req: Request<v1::RemoveImageRequest>,
    ) -> Reply<v1::RemoveImageResponse> {
        rpc("RemoveImage", async {
            self.runtime
                .images()
                .remove(&wanted(req.into_inner().image)?)
                .await?;
            Ok(v1::RemoveImageResponse {})
        })
        .await
    }

    async fn image_fs_info(
        &self,
        _req: Request<v1::ImageFsInfoRequest>,
    ) -> Reply<v1::ImageFsInfoResponse> {
        rpc("ImageFsInfo", async {
            let images = self.runtime.images().clone();
            let layers = self.runtime.writable_layers().clone();
            let (image_fs, container_fs) = off_thread(move || {
                Ok::<_, Error>((images.usage()?, layers.usage()?.total.clone()))
            })
            .await??;
            // One entry each: kubelet reads the first of each list as the
            // image filesystem and the container filesystem.
            Ok(v1::ImageFsInfoResponse {
                image_filesystems: vec![image::fs_usage_to(&image_fs)],
                container_filesystems: vec![image::fs_usage_to(&container_fs)],
            })
        })
        .await
    }
}
