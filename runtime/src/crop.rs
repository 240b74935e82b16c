//! A region of interest: the rectangle of each photo or frame that is classified, as
//! `x,y,w,h` in pixels or as fractions of the frame (a gate, a bin, a garage door).

use std::fmt;
use std::str::FromStr;

use image::RgbImage;

/// Where the rectangle is, in pixels or as fractions (0 to 1) of the frame's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crop {
    Pixels { x: u32, y: u32, w: u32, h: u32 },
    Fraction { x: f64, y: f64, w: f64, h: f64 },
}

/// A crop that cannot be parsed or applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CropError {
    #[error("expected a crop as x,y,w,h in pixels (100,40,320,240) or as fractions of the frame (0.5,0,0.5,1), got {0:?}")]
    Syntax(String),
    #[error("crop {0}: the width and height must be above 0")]
    Empty(Crop),
    #[error("crop {0} reaches outside the frame (fractions run from 0 to 1)")]
    OutsideFraction(Crop),
    #[error("crop {crop} reaches outside the {width}x{height} frame")]
    Outside { crop: Crop, width: u32, height: u32 },
}

impl FromStr for Crop {
    type Err = CropError;

    /// Pixels when every value is an integer, fractions when any has a decimal point.
    fn from_str(s: &str) -> Result<Crop, CropError> {
        let syntax = || CropError::Syntax(s.to_string());
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [x, y, w, h] = parts[..] else {
            return Err(syntax());
        };
        let crop = if parts.iter().any(|p| p.contains('.')) {
            let f = |p: &str| {
                p.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(syntax)
            };
            Crop::Fraction {
                x: f(x)?,
                y: f(y)?,
                w: f(w)?,
                h: f(h)?,
            }
        } else {
            let n = |p: &str| p.parse::<u32>().map_err(|_| syntax());
            Crop::Pixels {
                x: n(x)?,
                y: n(y)?,
                w: n(w)?,
                h: n(h)?,
            }
        };
        crop.check()?;
        Ok(crop)
    }
}

impl fmt::Display for Crop {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Crop::Pixels { x, y, w, h } => write!(f, "{x},{y},{w},{h}"),
            Crop::Fraction { x, y, w, h } => write!(f, "{x},{y},{w},{h}"),
        }
    }
}

impl Crop {
    /// What can be checked without the frame: an area, fractions within the frame.
    fn check(self) -> Result<(), CropError> {
        match self {
            Crop::Pixels { w, h, .. } if w == 0 || h == 0 => Err(CropError::Empty(self)),
            Crop::Fraction { w, h, .. } if w <= 0.0 || h <= 0.0 => Err(CropError::Empty(self)),
            Crop::Fraction { x, y, w, h }
                if x < 0.0 || y < 0.0 || x + w > 1.0 + 1e-9 || y + h > 1.0 + 1e-9 =>
            {
                Err(CropError::OutsideFraction(self))
            }
            _ => Ok(()),
        }
    }

    /// The rectangle `(x, y, w, h)` in a `width` x `height` frame.
    pub fn rect(self, width: u32, height: u32) -> Result<(u32, u32, u32, u32), CropError> {
        match self {
            Crop::Pixels { x, y, w, h } => {
                let fits = |o: u32, l: u32, max: u32| o.checked_add(l).is_some_and(|e| e <= max);
                if fits(x, w, width) && fits(y, h, height) {
                    Ok((x, y, w, h))
                } else {
                    Err(CropError::Outside {
                        crop: self,
                        width,
                        height,
                    })
                }
            }
            Crop::Fraction { x, y, w, h } => {
                let span = |o: f64, l: f64, max: u32| {
                    let start = ((o * f64::from(max)).round() as u32).min(max.saturating_sub(1));
                    let end = (((o + l) * f64::from(max)).round() as u32).clamp(start + 1, max);
                    (start, end - start)
                };
                let ((x, w), (y, h)) = (span(x, w, width), span(y, h, height));
                Ok((x, y, w, h))
            }
        }
    }

    /// The cropped copy of `img`.
    pub fn apply(self, img: &RgbImage) -> Result<RgbImage, CropError> {
        let (x, y, w, h) = self.rect(img.width(), img.height())?;
        Ok(image::imageops::crop_imm(img, x, y, w, h).to_image())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pixels_and_fractions_and_names_bad_ones() {
        let px: Crop = "10, 20,30,40".parse().unwrap();
        assert_eq!(
            px,
            Crop::Pixels {
                x: 10,
                y: 20,
                w: 30,
                h: 40
            }
        );
        assert_eq!(px.to_string(), "10,20,30,40");
        let fr: Crop = "0.5,0,0.5,1".parse().unwrap();
        assert_eq!(fr.rect(640, 480), Ok((320, 0, 320, 480)));
        for bad in [
            "1,2,3",
            "a,b,c,d",
            "1,2,3,4,5",
            "-1,0,2,2",
            "0.1,0.1,NaN,0.5",
        ] {
            assert_eq!(
                bad.parse::<Crop>(),
                Err(CropError::Syntax(bad.into())),
                "{bad}"
            );
        }
        assert!(matches!(
            "0,0,0,5".parse::<Crop>(),
            Err(CropError::Empty(_))
        ));
        let e = "0.6,0,0.5,1".parse::<Crop>().unwrap_err();
        assert!(e.to_string().contains("outside the frame"), "{e}");
    }

    #[test]
    fn pixels_outside_the_frame_are_refused_and_inside_are_cut() {
        let crop: Crop = "600,0,100,100".parse().unwrap();
        let e = crop.rect(640, 480).unwrap_err();
        assert_eq!(
            e.to_string(),
            "crop 600,0,100,100 reaches outside the 640x480 frame"
        );
        let big: Crop = "4294967295,0,2,2".parse().unwrap();
        assert!(big.rect(640, 480).is_err());
        let img = RgbImage::from_fn(8, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let cut = "2,1,3,2".parse::<Crop>().unwrap().apply(&img).unwrap();
        assert_eq!(cut.dimensions(), (3, 2));
        assert_eq!(cut.get_pixel(0, 0).0, [2, 1, 0]);
        // A sliver of a tiny frame still has a pixel.
        let thin = "0.99,0.99,0.01,0.01".parse::<Crop>().unwrap();
        assert_eq!(thin.rect(8, 4), Ok((7, 3, 1, 1)));
    }
}
