//! Binary patches between two versions of one file (issue 13): what lets a
//! phone move from the release it runs to another, up or down, for a
//! fraction of the bytes.
//!
//! # Format (`zstd-ref`)
//!
//! A patch is one standard zstd frame (RFC 8878) whose content is the
//! target file, compressed with the base file as a *reference prefix*
//! (`ZSTD_CCtx_refPrefix`; the `zstd --patch-from=BASE` of the command-line
//! tool). Any zstd ≥ 1.4.0 decodes it given the base as a prefix or as a
//! raw-content dictionary:
//!
//! ```text
//! zstd -d --patch-from=BASE --long=31 PATCH -o TARGET   # the command-line tool
//! ZSTD_DCtx_refPrefix(dctx, base, base_len)             # the C library
//! ```
//!
//! The frame's window covers the base and the target, up to 2 GiB: a decoder
//! must allow a window log of up to [`MAX_WINDOW_LOG`] (`--long=31`,
//! `ZSTD_d_windowLogMax`). The result is the target only if its BLAKE3 is the
//! target's: callers check it ([`apply`] does) and fall back to the whole
//! file on any failure.
//!
//! # Why zstd with a reference
//!
//! The targets are judged against `zstd -19 --long --patch-from`, per file
//! (BENCHMARKS.md, `patches`); on real consecutive releases (an 18 MB APK, a
//! 13 MB API description) that is 270 KB for the APK at level 19 and about
//! 315 KB at level 9 or 3 (measured with the command-line tool), so level 19
//! it is: about 5 s per direction for the APK on one core, in the
//! background, where the registry has time and the phones are many.
//! Decoding is a plain zstd decode, in the zstd library phones already ship
//! (Android through zstd-jni, iOS through libzstd), in both directions and
//! for any file type. A bsdiff-family format would need its own decoder on
//! every platform; it was not measured.

use std::io::{self, Read, Write};

use thiserror::Error;

/// The name of the format in answers and in the registry's tables.
pub const ALGORITHM: &str = "zstd-ref";
/// The largest window log a patch uses (2 GiB): decoders allow this much.
pub const MAX_WINDOW_LOG: u32 = 31;
/// The compression level patches are made with.
pub const LEVEL: i32 = 19;
/// The largest base or target a patch is made for (the window must cover
/// both).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Files smaller than this are sent whole: a patch would save too little to
/// be worth a second request.
pub const MIN_FILE_BYTES: u64 = 4096;

/// Whether a patch of `patch_len` bytes is clearly smaller than the
/// `target_len` bytes it rebuilds: at most half (else the whole file is
/// offered alone, and the client saves a decode for little).
pub fn worth_offering(patch_len: u64, target_len: u64) -> bool {
    patch_len.saturating_mul(2) <= target_len
}

/// Whether a compressed copy of `compressed_len` bytes is clearly smaller
/// than the `file_len` bytes it holds: it saves at least a tenth (text
/// usually shrinks four to ten times; packages already compressed, such as
/// APKs, barely at all and are then sent as they are).
pub fn worth_compressing(compressed_len: u64, file_len: u64) -> bool {
    compressed_len.saturating_mul(10) <= file_len.saturating_mul(9)
}

/// File name extensions (lowercase, without the dot) of text-like files,
/// which the registry also stores compressed: API descriptions, scripts,
/// style sheets, source maps, markup, data, WebAssembly.
pub const COMPRESSIBLE_EXTENSIONS: &[&str] = &[
    "cjs",
    "css",
    "csv",
    "graphql",
    "htm",
    "html",
    "js",
    "json",
    "jsonld",
    "map",
    "md",
    "mjs",
    "svg",
    "ts",
    "tsv",
    "txt",
    "wasm",
    "webmanifest",
    "xml",
    "yaml",
    "yml",
];

/// Whether the file at `path` is text-like by its extension
/// ([`COMPRESSIBLE_EXTENSIONS`], any case).
pub fn compressible(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty() && COMPRESSIBLE_EXTENSIONS.iter().any(|known| known.eq_ignore_ascii_case(ext))
    })
}

/// A whole file compressed: a patch from the empty file, that is one
/// standard zstd frame holding `file` that any zstd decoder reads without
/// a dictionary (`zstd -d`), allowing a window log of up to
/// [`MAX_WINDOW_LOG`] for files above 128 MiB. [`apply`] with an empty base
/// decodes and checks it.
pub fn compress(file: &[u8]) -> Result<Vec<u8>, PatchError> {
    make(&[], file)
}

/// The file of a base release a target file is patched from (and, the
/// other way, rolled back to): in the base's artifact of the same name and
/// kind, the file at the same path; for a single-file artifact, its one
/// file, whatever its name (`crm-2.3.apk` → `crm-2.4.apk`). The registry
/// (which makes patches) and the gateway (which offers them) both pair files
/// with this. `base_files` are sorted by path (as manifests keep them).
pub fn counterpart<'a, F>(
    single_file: bool,
    target_path: &str,
    base_files: &'a [F],
    path_of: impl Fn(&F) -> &str,
) -> Option<&'a F> {
    if single_file {
        return match base_files {
            [one] => Some(one),
            _ => None,
        };
    }
    base_files.binary_search_by(|f| path_of(f).as_bytes().cmp(target_path.as_bytes())).ok().map(|i| &base_files[i])
}

/// Why a patch could not be made or applied.
#[derive(Debug, Error)]
pub enum PatchError {
    #[error("files larger than {MAX_FILE_BYTES} bytes are not patched")]
    TooLarge,
    #[error("the patched result has {size} bytes and BLAKE3 {actual}, not the expected file")]
    Mismatch { size: u64, actual: blake3::Hash },
    #[error("zstd: {0}")]
    Zstd(#[source] io::Error),
    #[error("writing the patched file: {0}")]
    Write(#[source] io::Error),
}

/// The window log a patch from `base_len` to `target_len` bytes needs.
fn window_log(base_len: usize, target_len: usize) -> u32 {
    let span = (base_len + target_len).max(1) as u64;
    (64 - (span - 1).leading_zeros()).clamp(20, MAX_WINDOW_LOG)
}

/// Makes the patch that turns `base` into `target`.
pub fn make(base: &[u8], target: &[u8]) -> Result<Vec<u8>, PatchError> {
    make_at(base, target, LEVEL)
}

/// [`make`] at another zstd level (delta uploads trade a little size for
/// speed).
pub fn make_at(base: &[u8], target: &[u8], level: i32) -> Result<Vec<u8>, PatchError> {
    if base.len() as u64 > MAX_FILE_BYTES || target.len() as u64 > MAX_FILE_BYTES {
        return Err(PatchError::TooLarge);
    }
    let mut out = Vec::with_capacity(target.len() / 8 + 1024);
    let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(&mut out, level, base).map_err(PatchError::Zstd)?;
    encoder.window_log(window_log(base.len(), target.len())).map_err(PatchError::Zstd)?;
    encoder.long_distance_matching(true).map_err(PatchError::Zstd)?;
    // zstd's multi-threaded path (one worker) runs the long-distance
    // matcher over the whole reference; the single-threaded one indexes
    // only its last 2^25 bytes at level 19, and a 100 MB file's patch came
    // out the size of the file. (It is also what `zstd --patch-from` does.)
    encoder.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(1)).map_err(PatchError::Zstd)?;
    encoder.include_checksum(true).map_err(PatchError::Zstd)?;
    encoder.set_pledged_src_size(Some(target.len() as u64)).map_err(PatchError::Zstd)?;
    encoder.write_all(target).map_err(PatchError::Zstd)?;
    encoder.finish().map_err(PatchError::Zstd)?;
    Ok(out)
}

/// Applies `patch` to `base`, writing the result to `out` as it is decoded,
/// and checks it is the file with `expected` BLAKE3 and `expected_size`
/// bytes. On an error, what was written to `out` must be thrown away.
pub fn apply(
    base: &[u8],
    patch: impl Read,
    out: &mut impl Write,
    expected: &blake3::Hash,
    expected_size: u64,
) -> Result<(), PatchError> {
    let mut decoder =
        zstd::stream::read::Decoder::with_ref_prefix(io::BufReader::new(patch), base).map_err(PatchError::Zstd)?;
    decoder.window_log_max(MAX_WINDOW_LOG).map_err(PatchError::Zstd)?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = decoder.read(&mut buf).map_err(PatchError::Zstd)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > expected_size {
            return Err(PatchError::Mismatch { size, actual: hasher.finalize() });
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(PatchError::Write)?;
    }
    let actual = hasher.finalize();
    if size != expected_size || actual != *expected {
        return Err(PatchError::Mismatch { size, actual });
    }
    Ok(())
}

/// Decodes a frame made by [`make`] from `base` that must give exactly
/// `len` bytes (a delta upload's run of chunks, which the caller then
/// checks chunk by chunk): decoding stops as soon as it would give more, so
/// a hostile frame costs at most `len` bytes of memory.
pub fn decode_exact(base: &[u8], frame: &[u8], len: usize) -> Result<Vec<u8>, PatchError> {
    let mut decoder =
        zstd::stream::read::Decoder::with_ref_prefix(io::BufReader::new(frame), base).map_err(PatchError::Zstd)?;
    // No larger window than an honest frame of this base and length needs
    // (what `make` sets): a hostile one cannot make the decoder allocate more.
    decoder.window_log_max(window_log(base.len(), len)).map_err(PatchError::Zstd)?;
    let mut out = Vec::with_capacity(len);
    let read = (&mut decoder).take(len as u64 + 1).read_to_end(&mut out).map_err(PatchError::Zstd)?;
    if read != len {
        return Err(PatchError::Mismatch { size: read as u64, actual: blake3::hash(&out) });
    }
    Ok(out)
}

/// Applies `patch` to `base` in memory (the registry's check before a patch
/// is offered).
pub fn apply_to_vec(
    base: &[u8],
    patch: &[u8],
    expected: &blake3::Hash,
    expected_size: u64,
) -> Result<Vec<u8>, PatchError> {
    let mut out = Vec::with_capacity(expected_size.min(MAX_FILE_BYTES) as usize);
    apply(base, patch, &mut out, expected, expected_size)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_testkit::noise;

    /// `len` bytes of noise with `edits` regions of 1 KiB changed.
    fn edited(base: &[u8], seed: u64, edits: usize) -> Vec<u8> {
        let mut out = base.to_vec();
        for i in 0..edits {
            let at = (i * 7919 * 1024 + seed as usize * 31) % (out.len() - 1024);
            out[at..at + 1024].copy_from_slice(&noise(1024, seed + i as u64));
        }
        out
    }

    #[test]
    fn an_exact_decode_gives_exactly_the_length_or_fails() {
        let base = noise(200_000, 1);
        let target = edited(&base[..100_000], 2, 3);
        let frame = make(&base, &target).unwrap();
        assert!(frame.len() < 10_000, "{}", frame.len());
        assert_eq!(decode_exact(&base, &frame, target.len()).unwrap(), target);
        assert!(decode_exact(&base, &frame, target.len() - 1).is_err(), "longer than announced");
        assert!(decode_exact(&base, &frame, target.len() + 1).is_err(), "shorter than announced");
        assert!(decode_exact(&base[..base.len() - 1], &frame, target.len()).is_err(), "another base");
    }

    #[test]
    fn a_patch_rebuilds_the_target_in_both_directions_and_is_small() {
        let v1 = noise(3_000_000, 1);
        let mut v2 = edited(&v1, 2, 5);
        v2.extend_from_slice(&noise(20_000, 3));
        for (base, target) in [(&v1, &v2), (&v2, &v1)] {
            let patch = make(base, target).unwrap();
            assert!(patch.len() < 40_000, "{} bytes for 5 KiB of edits and 20 KB added", patch.len());
            let hash = blake3::hash(target);
            assert_eq!(&apply_to_vec(base, &patch, &hash, target.len() as u64).unwrap(), target);
        }
    }

    /// Larger than what level 19's own tables index of a reference (32
    /// MiB): the long-distance matcher must find the rest.
    #[test]
    fn a_reference_larger_than_the_match_tables_is_still_used() {
        let v1 = noise(48 << 20, 10);
        let v2 = edited(&v1, 11, 6);
        let patch = make(&v1, &v2).unwrap();
        assert!(patch.len() < 100_000, "{} bytes for 6 KiB of edits in 48 MiB", patch.len());
        assert!(apply_to_vec(&v1, &patch, &blake3::hash(&v2), v2.len() as u64).is_ok());
    }

    #[test]
    fn the_wrong_base_or_a_damaged_patch_is_refused() {
        let v1 = noise(500_000, 4);
        let v2 = edited(&v1, 5, 3);
        let patch = make(&v1, &v2).unwrap();
        let hash = blake3::hash(&v2);
        let other = edited(&v1, 6, 3);
        assert!(apply_to_vec(&other, &patch, &hash, v2.len() as u64).is_err(), "another base");
        let mut damaged = patch.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x40;
        assert!(apply_to_vec(&v1, &damaged, &hash, v2.len() as u64).is_err(), "a flipped bit");
        assert!(apply_to_vec(&v1, &patch[..patch.len() - 5], &hash, v2.len() as u64).is_err(), "truncated");
        assert!(apply_to_vec(&v1, &patch, &blake3::hash(b"other"), v2.len() as u64).is_err(), "another target");
        let short = apply_to_vec(&v1, &patch, &hash, v2.len() as u64 - 1).unwrap_err();
        assert!(matches!(short, PatchError::Mismatch { .. }), "{short}");
    }

    #[test]
    fn a_compressed_file_is_a_plain_zstd_frame() {
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("{{\"id\": {i}, \"name\": \"item {}\"}},\n", i % 97).into_bytes())
            .collect();
        let compressed = compress(&text).unwrap();
        assert!(
            worth_compressing(compressed.len() as u64, text.len() as u64),
            "{} of {}",
            compressed.len(),
            text.len()
        );
        // Any decoder, no dictionary.
        assert_eq!(zstd::stream::decode_all(compressed.as_slice()).unwrap(), text);
        let hash = blake3::hash(&text);
        assert_eq!(apply_to_vec(&[], &compressed, &hash, text.len() as u64).unwrap(), text);
        // Noise does not shrink: not worth offering.
        let noise = noise(100_000, 9);
        assert!(!worth_compressing(compress(&noise).unwrap().len() as u64, noise.len() as u64));
    }

    #[test]
    fn text_like_files_are_known_by_their_extension() {
        for path in ["openapi.json", "static/js/main.3f2a.JS", "a/b/style.css", "main.js.map", "spec.yaml"] {
            assert!(compressible(path), "{path}");
        }
        for path in ["crm-2.4.apk", "logo.png", "json", "dir.json/blob", ".json", "a/.css", "font.woff2"] {
            assert!(!compressible(path), "{path}");
        }
    }

    #[test]
    fn files_pair_by_path_or_as_the_one_file() {
        let base = ["a.js", "b.js", "c/d.js"];
        assert_eq!(counterpart(false, "b.js", &base, |f| f), Some(&"b.js"));
        assert_eq!(counterpart(false, "c/d.js", &base, |f| f), Some(&"c/d.js"));
        assert_eq!(counterpart(false, "c.js", &base, |f| f), None);
        assert_eq!(counterpart(true, "crm-2.4.apk", &["crm-2.3.apk"], |f| f), Some(&"crm-2.3.apk"));
        assert_eq!(counterpart(true, "x", &base, |f| f), None);
        assert!(worth_offering(50, 100) && !worth_offering(51, 100));
    }

    /// What the app guides (docs/clients.md) do on phones: one-shot
    /// decoding with the base as a raw-content dictionary (zstd-jni's
    /// `loadDict`) or as a prefix (`ZSTD_DCtx_refPrefix` then
    /// `ZSTD_decompressDCtx`), with no window limit to raise.
    #[test]
    fn phones_decode_with_the_base_as_dictionary_or_prefix() {
        let v1 = noise(2_000_000, 8);
        let v2 = edited(&v1, 9, 4);
        let patch = make(&v1, &v2).unwrap();
        let as_dictionary =
            zstd::bulk::Decompressor::with_dictionary(&v1).unwrap().decompress(&patch, v2.len()).unwrap();
        assert!(as_dictionary == v2);
        let mut dctx = zstd::zstd_safe::DCtx::create();
        dctx.ref_prefix(&v1).unwrap();
        let mut out = Vec::with_capacity(v2.len());
        dctx.decompress(&mut out, &patch).unwrap();
        assert!(out == v2);
    }

    #[test]
    fn windows_cover_base_and_target() {
        assert_eq!(window_log(0, 0), 20);
        assert_eq!(window_log(1 << 20, 1 << 20), 21);
        assert_eq!(window_log(18_000_000, 18_000_000), 26);
        assert_eq!(window_log(1 << 30, 1 << 30), 31);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Any base and target: the patch rebuilds exactly the target.
        #[test]
        fn any_pair_round_trips(base in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
                                target in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            let patch = make(&base, &target).unwrap();
            let hash = blake3::hash(&target);
            proptest::prop_assert_eq!(apply_to_vec(&base, &patch, &hash, target.len() as u64).unwrap(), target);
        }
    }
}
