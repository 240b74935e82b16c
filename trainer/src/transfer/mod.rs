//! Transfer learning: a pretrained classifier's body, frozen, turns images into feature
//! vectors; a small head trained on those features classifies the user's classes; the head
//! is grafted onto the body as one ONNX bundle the board runs unchanged.
//!
//! Stages, one per module: `backbone` (cut the pretrained graph before its last layer and
//! run it through tract), `cache` (features on disk, keyed by image content, view and
//! backbone, so a second run with other head settings extracts nothing), `head` (the burn
//! head and its training loop on features), `graft` (head weights into the backbone graph,
//! with a parity check of the bundle against backbone + head). With `--fine-tune N`,
//! `blocks` cuts the backbone N blocks lower, the cache holds the activations there, and
//! `tail` rebuilds those blocks in burn to train with the head and write them back.

pub mod backbone;
pub mod blocks;
pub mod cache;
pub mod features;
pub mod graft;
pub mod head;
pub mod tail;

pub use backbone::Backbone;
pub use cache::FeatureCache;
pub use head::{FineTuneConfig, Head, HeadConfig, HeadOutcome, HeadTrainingConfig, OnFeatures};
