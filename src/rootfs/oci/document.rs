//! The layout's JSON documents: descriptors, indexes, manifests and image configs. Only the
//! fields used here are declared; serde ignores the rest.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{clip, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};

/// A content descriptor: what a blob is, its digest and size, and for index entries the
/// annotations and platform that pick one.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    pub(super) media_type: String,
    // Kept as a string so a bad digest is reported with where it was found.
    pub(super) digest: String,
    pub(super) size: u64,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) platform: Option<Platform>,
}

/// The platform an index entry is for.
#[derive(Deserialize, Debug, Clone)]
pub(super) struct Platform {
    #[serde(default)]
    pub(super) architecture: String,
    #[serde(default)]
    pub(super) os: String,
    #[serde(default)]
    pub(super) variant: Option<String>,
}

impl Descriptor {
    pub(super) fn ref_name(&self) -> Option<&str> {
        self.annotations.get(ANNOTATION_REF_NAME).map(String::as_str)
    }

    pub(super) fn is_index(&self) -> bool {
        self.media_type == MEDIA_TYPE_INDEX || self.media_type == MEDIA_TYPE_DOCKER_LIST
    }

    pub(super) fn is_manifest(&self) -> bool {
        self.media_type == MEDIA_TYPE_MANIFEST || self.media_type == MEDIA_TYPE_DOCKER_MANIFEST
    }

    pub(super) fn matches_ref(&self, reference: &str) -> bool {
        self.ref_name() == Some(reference)
            || self.annotations.get(ANNOTATION_CONTAINERD_NAME).map(String::as_str) == Some(reference)
    }

    /// How the descriptor is named in a list of choices: ref name, platform, digest.
    pub(super) fn describe(&self) -> String {
        let mut s = match self.ref_name() {
            Some(r) => format!("'{}'", clip(r)),
            None => "(no ref name)".to_owned(),
        };
        if let Some(p) = &self.platform {
            s.push_str(&format!(" {}/{}", clip(&p.os), clip(&p.architecture)));
            if let Some(v) = &p.variant {
                s.push_str(&format!("/{}", clip(v)));
            }
        }
        s.push_str(&format!(" {}", clip(&self.digest)));
        s
    }
}

/// An image index (`index.json` or a nested index blob).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct IndexDoc {
    pub(super) schema_version: u32,
    #[serde(default)]
    pub(super) manifests: Vec<Descriptor>,
}

/// An image manifest: the config and the layers, bottom first.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct ManifestDoc {
    #[serde(default)]
    pub(super) media_type: Option<String>,
    pub(super) config: Descriptor,
    #[serde(default)]
    pub(super) layers: Vec<Descriptor>,
}

/// An image config: platform, runtime config and the layers' diff_ids.
#[derive(Deserialize, Debug)]
pub(super) struct ConfigDoc {
    #[serde(default)]
    pub(super) architecture: String,
    #[serde(default)]
    pub(super) os: String,
    #[serde(default)]
    pub(super) config: Option<ImageConfig>,
    pub(super) rootfs: RootFs,
}

/// The config's `rootfs`: `type` must be "layers".
#[derive(Deserialize, Debug)]
pub(super) struct RootFs {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) diff_ids: Vec<String>,
}

/// The part of an image config's `config` object a runtime needs. Docker writes `null` for
/// unset fields, which serde reads as `None`.
#[derive(Deserialize, serde::Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Env`: `NAME=value` strings.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `Cmd`: the default command, or the default arguments of the entrypoint.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `Entrypoint`: what runs, with `Cmd` (or the user's command) as arguments.
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `WorkingDir`: the directory the command starts in.
    #[serde(rename = "WorkingDir", default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `User`: `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}
