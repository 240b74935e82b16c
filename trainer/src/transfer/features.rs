//! Feature extraction over a dataset: cached views are read, the rest run through the
//! backbone on all cores, and the cache is saved as it grows so a killed run keeps its work.

use std::time::Instant;

use anyhow::Result;
use fast_image_resize::Resizer;
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::backbone::Backbone;
use super::cache::{self, FeatureCache, Key};
use crate::augment::Augment;

/// Which view of an image to extract.
#[derive(Debug, Clone, Copy)]
pub enum View<'a> {
    /// The image preprocessed as the bundle will preprocess it on the board.
    Plain,
    /// An augmented view drawn with `seed`.
    Augmented { augment: &'a Augment, seed: u64 },
}

impl View<'_> {
    fn describe(&self) -> String {
        match self {
            View::Plain => "plain".into(),
            View::Augmented { augment, seed } => format!(
                "augmented {} seed {seed}",
                serde_json::to_string(augment).expect("augment serializes")
            ),
        }
    }
}

/// How much extraction a run did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Extraction {
    pub computed: usize,
    pub from_cache: usize,
    pub seconds: f64,
    /// The cache file's size after the run.
    pub cache_bytes: u64,
}

/// Save the cache at least this often during a long extraction.
const SAVE_EVERY_SECS: f64 = 60.0;

/// The feature vector of every `(image, view)`, in order.
pub fn extract(
    backbone: &Backbone,
    cache: &mut FeatureCache,
    context: &str,
    items: &[(&RgbImage, View)],
    what: &str,
) -> Result<(Vec<Vec<f32>>, Extraction)> {
    let started = Instant::now();
    let keys: Vec<Key> = items
        .par_iter()
        .map(|(img, view)| cache::key(context, &view.describe(), img))
        .collect();
    let missing: Vec<usize> = (0..items.len())
        .filter(|i| cache.get(&keys[*i]).is_none())
        .collect();
    let from_cache = items.len() - missing.len();
    if !missing.is_empty() {
        let bar = crate::progress::bar(missing.len() as u64, &format!("features ({what})"));
        let mut last_save = Instant::now();
        // Chunks bound the work lost to a kill and let the cache be saved in between.
        for chunk in missing.chunks(256) {
            let computed: Vec<Result<Vec<f32>>> = chunk
                .par_iter()
                .map_init(Resizer::new, |resizer, &i| {
                    let (img, view) = items[i];
                    let fitted = match view {
                        View::Plain => backbone.preprocess.fit(img, resizer),
                        View::Augmented { augment, seed } => augment.apply(
                            img,
                            &backbone.preprocess,
                            &mut ChaCha8Rng::seed_from_u64(seed),
                            resizer,
                        ),
                    };
                    let f = backbone.features_of_fitted(&fitted);
                    bar.inc(1);
                    f
                })
                .collect();
            for (&i, f) in chunk.iter().zip(computed) {
                cache.insert(keys[i], f?);
            }
            if last_save.elapsed().as_secs_f64() > SAVE_EVERY_SECS {
                cache.save()?;
                last_save = Instant::now();
            }
        }
        bar.finish_and_clear();
        cache.save()?;
    }
    let features = keys
        .iter()
        .map(|k| cache.get(k).expect("extracted above").to_vec())
        .collect();
    Ok((
        features,
        Extraction {
            computed: missing.len(),
            from_cache,
            seconds: started.elapsed().as_secs_f64(),
            cache_bytes: cache.file_bytes(),
        },
    ))
}
